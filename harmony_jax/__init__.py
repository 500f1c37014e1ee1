"""harmony_jax: joint audio-video generation (Harmony, arXiv 2511.21579) in JAX/Flax."""

__version__ = "0.1.0"
