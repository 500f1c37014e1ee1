"""The codec interface (DESIGN.md section 3): what the model, loss and sampler may assume.

Every codec states its latent rate and the time of each latent frame, so the model never
hard-codes frame rates; both branches turn `frame_times` into RoPE positions in one unit.
Convention: a latent frame's time is the instant its content stands for: a video frame's
capture (= presentation) time, i / fps for the pixel codec; an analysis window's centre for
framed audio, (i + 0.5) / latent_rate for the mel codec (`timeline.interval_centres`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import flax.linen as nn
import jax
import numpy as np


@runtime_checkable
class VideoCodec(Protocol):
    """Pixels [B, F, H, W, 3] in [-1, 1] <-> latents [B, Tv, h, w, Cv]."""

    latent_channels: int  # Cv
    latent_rate: float  # latent frames per second (a Wan-style first frame aside)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(Tv, h, w) of the latents of a clip of that size."""

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        """float64 [Tv] seconds at the centre of each latent frame."""

    def encode(self, video: jax.Array) -> jax.Array:
        """[B, F, H, W, 3] in [-1, 1] -> [B, Tv, h, w, Cv]; jittable, runs on device."""

    def decode(self, latents: jax.Array) -> np.ndarray:
        """[B, Tv, h, w, Cv] -> float32 frames [B, F, H, W, 3] in [-1, 1]; may run on host."""


@runtime_checkable
class AudioCodec(Protocol):
    """Waveform [B, S] at `sample_rate` <-> latents [B, Ta, Ca]."""

    sample_rate: int
    latent_channels: int  # Ca
    latent_rate: float  # latent frames per second

    def num_latent_frames(self, num_samples: int) -> int:
        """Ta for a waveform of `num_samples` samples."""

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        """float64 [Ta] seconds at the centre of each latent frame."""

    def encode(self, wave: jax.Array) -> jax.Array:
        """[B, S] -> [B, Ta, Ca]; jittable, runs on device."""

    def decode(self, latents: jax.Array) -> np.ndarray:
        """[B, Ta, Ca] -> float32 waveform [B, S]; may run on host."""


@runtime_checkable
class TextEncoder(Protocol):
    """Host tokenizer + a linen module that embeds the ids on device.

    A frozen encoder (`trainable` False) whose module has parameters also holds them, as
    `params` (loaded on first access): `System.embed_text` applies the module with them.
    """

    max_len: int  # L: every prompt is padded / truncated to this many tokens
    dim: int  # Dt: embedding width (config.model.text_dim)
    trainable: bool  # whether `module`'s params are trained with the model
    module: nn.Module  # ids int32 [B, L] -> embeddings [B, L, Dt]

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompts -> (ids int32 [B, L], mask bool [B, L], True = real token)."""
