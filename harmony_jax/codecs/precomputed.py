"""Codecs whose inputs already are their outputs: a run trained from latent records.

Each wraps the run's real codec (or text encoder) and keeps its geometry: latent shapes, rates,
frame times and the decoder all come from the wrapped object, so a latent run and a media run
share one definition of time. Only `encode` changes: the identity on the stored latents (cast to
float32, as the real encoders return), so the encoder's weights are never read. The real
codecs read their weights lazily (on first encode / decode), so wrapping one loads nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, like the codecs it wraps
class _PrecomputedLatents:
    """Latents in, the same out; the timing and the decoder of the wrapped `codec`."""

    codec: Any

    latent_channels = property(lambda self: self.codec.latent_channels)
    latent_rate = property(lambda self: self.codec.latent_rate)

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return self.codec.frame_times(num_latent_frames)

    def encode(self, latents: jax.Array) -> jax.Array:
        return jnp.asarray(latents).astype(jnp.float32)

    def decode(self, latents: jax.Array) -> np.ndarray:
        return self.codec.decode(latents)


@dataclasses.dataclass(frozen=True, eq=False)
class PrecomputedVideo(_PrecomputedLatents):
    """Video latents [B, Tv, h, w, Cv]; the geometry of the video `codec`."""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return self.codec.latent_shape(num_frames, height, width)


@dataclasses.dataclass(frozen=True, eq=False)
class PrecomputedAudio(_PrecomputedLatents):
    """Audio latents [B, Ta, Ca]; the sample rate and frame count of the audio `codec`."""

    sample_rate = property(lambda self: self.codec.sample_rate)

    def num_latent_frames(self, num_samples: int) -> int:
        return self.codec.num_latent_frames(num_samples)


class Embeddings(nn.Module):
    """The 'text encoder' of precomputed embeddings: its input already is its output."""

    @nn.compact
    def __call__(self, embeddings: jax.Array) -> jax.Array:
        return embeddings.astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class PrecomputedText:
    """A frozen text encoder's embeddings [B, L, Dt] in place of token ids.

    `empty` is the encoder's embedding of the empty prompt [n, Dt] (what caption dropout and
    CFG's unconditional side feed), stored at encode time; `tokenize` serves it and only it, as
    no other prompt can be embedded without the encoder."""

    max_len: int
    dim: int
    empty: np.ndarray  # [n, Dt] float32, n <= max_len real tokens
    trainable: bool = dataclasses.field(default=False, init=False)

    @property
    def module(self) -> nn.Module:
        return Embeddings()

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if any(texts):
            raise ValueError(
                "a run trained from precomputed text embeddings can embed only the "
                "empty prompt; prompts need the text encoder (build_system)"
            )
        return pad_tokens(
            np.broadcast_to(self.empty, (len(texts), *self.empty.shape)), self.max_len
        )


def pad_tokens(embeddings: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-token embeddings [B, n, Dt] -> zero-padded [B, max_len, Dt] and mask [B, max_len]
    (zeros, as Wan pads its umT5 context: what `model.video.text_pad_to` attends, and what a
    masked tower never reads)."""
    b, n, dim = embeddings.shape
    out = np.zeros((b, max_len, dim), embeddings.dtype)
    out[:, :n] = embeddings
    mask = np.zeros((b, max_len), bool)
    mask[:, :n] = True
    return out, mask
