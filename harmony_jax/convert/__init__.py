"""Importers from published upstream checkpoints (safetensors, diffusers or original layouts)
into our parameter trees, and `python -m harmony_jax.convert <command>` writing them as orbax
checkpoints that a run config loads (e.g. `config.init.video_from`)."""
