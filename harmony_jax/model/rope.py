"""Rotary position embeddings over real-valued positions (Wan's interleaved-pair layout).

Positions may be fractional: the cross-modal attention places both branches on one time axis
(seconds x video latent rate), the generalisation of the paper's j' = j * Tv / Ta.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head into (time, height, width) rotary sub-dimensions."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(positions, axis_dims: Sequence[int], theta: float = 10000.0, xp=jnp):
    """Rotation angles [..., L, head_dim / 2] for positions [..., L, len(axis_dims)].

    `xp=np` computes static tables in float64 (as diffusers does) before they become constants.
    """
    parts = []
    for axis, dim in enumerate(axis_dims):
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim))
        inv_freq = inv_freq if xp is np else jnp.asarray(inv_freq, jnp.float32)
        parts.append(positions[..., axis, None] * inv_freq)
    return xp.concatenate(parts, axis=-1)


def video_grid_angles(
    frames: int, height: int, width: int, head_dim: int, theta: float = 10000.0
) -> np.ndarray:
    """Static angles [frames*height*width, head_dim/2] for a (t, h, w) token grid (Wan 3D RoPE)."""
    t, h, w = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    pos = np.stack([t, h, w], axis=-1).reshape(-1, 3).astype(np.float64)
    return rope_angles(pos, axis_split(head_dim), theta, xp=np).astype(np.float32)


def sequence_angles(positions: jax.Array, head_dim: int) -> jax.Array:
    """Angles [..., L, head_dim/2] for 1D positions [..., L] (audio and cross-modal attention)."""
    return rope_angles(positions[..., None], (head_dim,))


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates interleaved pairs (x[2i], x[2i+1]) of x [B, L, N, Hd] by angles [(B,) L, Hd/2]."""
    if angles.ndim == 2:
        angles = angles[None]
    cos = jnp.cos(angles)[:, :, None, :]  # [B, L, 1, Hd/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x32[..., 0], x32[..., 1]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
