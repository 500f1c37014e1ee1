"""The one attention function (kernel chosen by config) and the Wan-style attention layer."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from harmony_jax.model.layers import RMSNorm, dense
from harmony_jax.model.rope import apply_rope

Dtype = Any


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: Optional[jax.Array] = None, implementation: str = "xla") -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for q [B, Lq, N, Hd], k/v [B, Lk, N, Hd].

    `mask` (bool, True = attend) broadcasts to [B, N, Lq, Lk]. `implementation` is
    `config.model.attention`: 'xla', 'cudnn' (fused flash kernel on NVIDIA GPUs) or 'auto'
    (let JAX pick). Every attention in the model goes through here.
    """
    impl = None if implementation == "auto" else implementation
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


class Attention(nn.Module):
    """Multi-head attention with Wan's qk-RMSNorm across heads and optional RoPE on q and k.

    Self-attention when `context` is None, cross-attention otherwise. `zero_out` starts the output
    projection at zero (interaction layers leave a pretrained tower unchanged at step 0).
    """

    dim: int
    heads: int
    eps: float = 1e-6
    zero_out: bool = False
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None, *,
                 q_angles: Optional[jax.Array] = None, k_angles: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        context = x if context is None else context
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense(self.dim, ("embed", "heads"), name="q", **kw)(x)
        k = dense(self.dim, ("kv_embed", "heads"), name="k", **kw)(context)
        v = dense(self.dim, ("kv_embed", "heads"), name="v", **kw)(context)
        q = RMSNorm(self.eps, param_dtype=self.param_dtype, name="norm_q")(q)
        k = RMSNorm(self.eps, param_dtype=self.param_dtype, name="norm_k")(k)
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, self.dim // self.heads)  # [B, L, N, Hd]
        q, k, v = split(q), split(k), split(v)
        if q_angles is not None:
            q = apply_rope(q, q_angles)
        if k_angles is not None:
            k = apply_rope(k, k_angles)
        q = nn.with_logical_constraint(q, ("batch", "act_length", "act_heads", "kv"))
        out = dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        out = out.reshape(*out.shape[:-2], self.dim)
        return dense(self.dim, ("heads", "embed"), name="out", zero_init=self.zero_out, **kw)(out)
