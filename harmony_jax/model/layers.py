"""Building blocks shared by both towers: dense layers with logical axes, norms, embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def dense(
    features: int,
    axes: tuple[str, str],
    *,
    name: str,
    dtype: Dtype,
    param_dtype: Dtype,
    zero_init: bool = False,
    use_bias: bool = True,
) -> nn.Dense:
    """A Dense whose kernel and bias carry logical axis names (and optionally start at zero)."""
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
    )


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in float32 (Wan's qk-norm spans all heads)."""

    eps: float = 1e-6
    axis_name: str = "heads"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(x.dtype)


class LayerNorm32(nn.Module):
    """LayerNorm in float32, with or without affine parameters (Wan's FP32LayerNorm)."""

    eps: float = 1e-6
    affine: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            epsilon=self.eps,
            use_scale=self.affine,
            use_bias=self.affine,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            name="ln",
        )(x.astype(jnp.float32))


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features [cos | sin] of timesteps in [0, 1000] (diffusers `Timesteps`)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLP(nn.Module):
    """Two Dense layers with an activation between them (Wan FFN, timestep and text embedders)."""

    hidden: int
    out: int
    activation: Callable[[jax.Array], jax.Array]
    axes: Sequence[str] = ("embed", "mlp")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a_in, a_hidden = self.axes
        x = dense(
            self.hidden,
            (a_in, a_hidden),
            name="fc1",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
        x = self.activation(x)
        return dense(
            self.out,
            (a_hidden, "embed"),
            name="fc2",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


def gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift
