"""Weight files on disk, whatever the architecture: upstream torch / safetensors state dicts
(`state_dict`, `upstream`) and our orbax trees of host arrays (`store`). The importers
(`codecs/*_weights.py`, `convert/`) build on these; nothing here knows a model."""
