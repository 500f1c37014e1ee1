"""Flax linen modules of the dual-branch Harmony DiT."""

from harmony_jax.model.conditioning import Conditioning
from harmony_jax.model.config import ModelConfig
from harmony_jax.model.dit import HarmonyDiT

__all__ = ["Conditioning", "HarmonyDiT", "ModelConfig"]
