"""The Wan2.2 transformer block, shared by both towers, and the tower embedders and head.

Modulation is per latent frame: tokens are grouped [B, T, n, D] (n = h*w video tokens per frame,
n = 1 for audio), so per-token timesteps never materialise a [B, L, 6, D] tensor.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from harmony_jax.model.attention import Attention
from harmony_jax.model.layers import MLP, LayerNorm32, dense, gelu_tanh, modulate, timestep_features
from harmony_jax.model.splash import SplashBlocks

Dtype = Any


def _per_frame(x: jax.Array, frames: int) -> jax.Array:
    """[B, T*n, D] -> [B, T, n, D]."""
    return x.reshape(x.shape[0], frames, -1, x.shape[-1])


def _table_init(dim: int):
    """Wan's modulation tables: N(0, 1/dim), shared over the batch and frames."""
    init = lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / dim**0.5
    return nn.with_logical_partitioning(init, (None, None, "embed"))


class DiTBlock(nn.Module):
    """Self-attention (RoPE, qk-norm) -> text cross-attention -> GELU(tanh) FFN, AdaLN-modulated."""

    dim: int
    heads: int
    ffn_dim: int
    eps: float = 1e-6
    implementation: str = "xla"
    splash_blocks: SplashBlocks = SplashBlocks()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mod: jax.Array,
        context: jax.Array,
        context_mask: jax.Array | None,
        angles: jax.Array,
    ) -> jax.Array:
        # x [B, L, D]; mod [B, T, 6, D] per-frame timestep projection; context [B, Lc, D]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        table = self.param(
            "scale_shift_table", _table_init(self.dim), (1, 6, self.dim), self.param_dtype
        )
        frames = mod.shape[1]
        mod = (table[None] + mod.astype(jnp.float32))[:, :, :, None, :]  # [B, T, 6, 1, D]
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, :, i] for i in range(6))
        attn = lambda name: Attention(
            self.dim,
            self.heads,
            self.eps,
            implementation=self.implementation,
            splash_blocks=self.splash_blocks,
            name=name,
            **kw,
        )

        h = _per_frame(LayerNorm32(self.eps, name="norm1")(x), frames)
        h = modulate(h, shift, scale).reshape(x.shape).astype(self.dtype)
        y = _per_frame(attn("self_attn")(h, q_angles=angles, k_angles=angles), frames)
        x = (_per_frame(x.astype(jnp.float32), frames) + y * gate).reshape(x.shape).astype(x.dtype)

        h = LayerNorm32(self.eps, affine=True, name="norm2")(x).astype(self.dtype)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        x = x + attn("cross_attn")(h, context, mask=mask)

        h = _per_frame(LayerNorm32(self.eps, name="norm3")(x), frames)
        h = modulate(h, c_shift, c_scale).reshape(x.shape).astype(self.dtype)
        # tokens stay split over 'sequence' into the FFN: left free, the partitioner splits
        # its contraction instead (the weights' 'embed' axis is on 'sequence' too) and
        # all-reduces the whole [B, L, ffn] hidden state on every device
        h = nn.with_logical_constraint(h, ("batch", "act_length", "act_embed"))
        y = MLP(self.ffn_dim, self.dim, gelu_tanh, name="ffn", **kw)(h)
        x = _per_frame(x.astype(jnp.float32), frames) + _per_frame(y, frames) * c_gate
        x = x.reshape(y.shape).astype(y.dtype)
        return nn.with_logical_constraint(x, ("batch", "act_length", "act_embed"))


class TimeEmbedding(nn.Module):
    """Timesteps [B, T] -> (temb [B, T, D] for the head, block modulation [B, T, 6, D])."""

    dim: int
    freq_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        temb = MLP(self.dim, self.dim, nn.silu, axes=("freq", "mlp"), name="time_embedder", **kw)(
            timestep_features(t, self.freq_dim)
        )
        mod = dense(6 * self.dim, ("embed", "mlp"), name="time_proj", **kw)(nn.silu(temb))
        return temb, mod.reshape(*mod.shape[:-1], 6, self.dim)


class Head(nn.Module):
    """Final AdaLN (shift, scale from temb) and the projection back to patch values."""

    dim: int
    out_features: int
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        # x [B, T*n, D]; temb [B, T, D]
        table = self.param(
            "scale_shift_table", _table_init(self.dim), (1, 2, self.dim), self.param_dtype
        )
        mod = (table[None] + temb.astype(jnp.float32)[:, :, None, :])[:, :, :, None, :]
        h = _per_frame(LayerNorm32(self.eps, name="norm_out")(x), temb.shape[1])
        h = modulate(h, mod[:, :, 0], mod[:, :, 1]).reshape(x.shape).astype(self.dtype)
        return dense(
            self.out_features,
            ("embed", "channels"),
            name="proj_out",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(h)
