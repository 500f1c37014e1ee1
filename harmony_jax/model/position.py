"""Absolute position embeddings of the video tokens (`model.video.pos_embed`), off for Wan.

Why: with a patch embedding, relative RoPE and a uniform background, the video tower is exactly
translation-equivariant: a spatially constant input gives every patch position the same output,
so nothing tells it where the walls are. Wan's towers have none; 'none' keeps an import exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.model.rope import axis_split

POS_EMBEDS = ("none", "sincos", "learned")
_LEARNED_STD = 0.02


def sincos_grid(frames: int, height: int, width: int, dim: int) -> np.ndarray:
    """Fixed [frames*height*width, dim] table: per axis (t, h, w; Wan's split of `dim`), sines
    then cosines of the token index at periods from 2 up to 4x the axis length, so every axis
    of a small grid is resolved (a 10000 base leaves most features constant over 5 patches)."""
    axes = [np.arange(frames), np.arange(height), np.arange(width)]
    parts = []
    for index, size, d in zip(
        np.meshgrid(*axes, indexing="ij"), (frames, height, width), axis_split(dim)
    ):
        n = d // 2
        periods = 2.0 * (2.0 * size) ** (np.arange(n) / max(n - 1, 1))  # 2 .. 4 * size
        phase = 2 * np.pi * index.reshape(-1, 1).astype(np.float64) / periods
        parts += [np.sin(phase), np.cos(phase)]
        if d % 2:
            parts.append(np.zeros((phase.shape[0], 1)))
    return np.concatenate(parts, axis=-1).astype(np.float32)


class VideoPositionEmbedding(nn.Module):
    """[Lv, dim] added to the patch embeddings of a (t, h, w) token grid; 'learned' is a
    spatial table [h*w, dim] plus a temporal one [t, dim], so frames share the walls."""

    kind: str
    dim: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, frames: int, height: int, width: int) -> jax.Array:
        if self.kind == "sincos":
            return jnp.asarray(sincos_grid(frames, height, width, self.dim))
        init = nn.with_logical_partitioning(nn.initializers.normal(_LEARNED_STD), (None, "embed"))
        spatial = self.param("spatial", init, (height * width, self.dim), self.param_dtype)
        temporal = self.param("temporal", init, (frames, self.dim), self.param_dtype)
        return (temporal[:, None, :] + spatial[None]).reshape(-1, self.dim)
