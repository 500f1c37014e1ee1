"""The umT5 encoder (transformers `UMT5EncoderModel`; Wan2.2's text encoder is umT5-XXL) in linen.
The frozen text encoder built on it, with the checkpoint's tokenizer, is `codecs/umt5_text.py`.

umT5 is T5 v1.1 with one relative-position bias table per layer (T5 shares layer 0's): pre-norm
blocks with an RMS norm (T5LayerNorm: scale, no mean, no bias), unscaled dot-product attention
plus the bucketed position bias, a gated-GELU(tanh) FFN, no biases anywhere. Layers are scanned
(parameters stacked on axis 0). Everything is computed in float32 whatever the parameters' dtype
(the published weights are bfloat16); the embedding table is gathered before the cast.

Padding. Token id 0 is T5's padding: the attention mask is `ids != 0`, and padded positions of the
output are zeroed, as Wan's pipelines do before the DiT sees the context.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.model.layers import gelu_tanh

Array = jax.Array
PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """`UMT5Config`'s encoder fields; the defaults are google/umt5-xxl's (Wan2.2's)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 [L, L] bidirectional T5 bucket of key position minus query position, computed in
    float32 exactly as transformers does (a bucket edge can fall within float32 rounding)."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]  # [Lq, Lk]
    half = num_buckets // 2
    exact = half // 2
    dist = np.abs(rel)
    log_ratio = (
        np.log(np.maximum(dist, 1).astype(np.float32) / exact)
        / np.float32(math.log(max_distance / exact))
        * np.float32(half - exact)
    )
    large = np.minimum(exact + log_ratio.astype(np.int64), half - 1)
    return ((rel > 0) * half + np.where(dist < exact, dist, large)).astype(np.int32)


class RMSNorm(nn.Module):
    """T5LayerNorm: x * rsqrt(mean(x^2) + eps) * scale."""

    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return x * scale.astype(jnp.float32)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=jnp.float32, name=name)


class UMT5Layer(nn.Module):
    """One encoder block: self-attention with its own position bias, then the gated FFN."""

    config: UMT5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, buckets: Array) -> tuple[Array, None]:
        cfg = self.config
        b, length, _ = x.shape
        h = RMSNorm(cfg.eps, name="attn_norm")(x)
        q, k, v = (
            _dense(cfg.num_heads * cfg.d_kv, n)(h).reshape(b, length, cfg.num_heads, cfg.d_kv)
            for n in ("q", "k", "v")
        )  # [B, L, H, dk]
        table = self.param(
            "relative_attention_bias", nn.initializers.normal(1.0), (cfg.num_buckets, cfg.num_heads)
        )
        position = table.astype(jnp.float32)[buckets].transpose(2, 0, 1)  # [H, Lq, Lk]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + position + bias  # no 1/sqrt(dk) in T5
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + _dense(cfg.d_model, "o")(attn.reshape(b, length, -1))
        h = RMSNorm(cfg.eps, name="ffn_norm")(x)
        h = gelu_tanh(_dense(cfg.d_ff, "wi_0")(h)) * _dense(cfg.d_ff, "wi_1")(h)  # [B, L, F]
        return x + _dense(cfg.d_model, "wo")(h), None


class UMT5Encoder(nn.Module):
    """ids int32 [B, L] -> float32 [B, L, d_model] (last hidden state; padding zeroed)."""

    config: UMT5Config

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        cfg = self.config
        mask = ids != PAD_ID  # [B, L]
        table = self.param("embedding", nn.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model))
        x = jnp.take(table, ids, axis=0).astype(jnp.float32)  # [B, L, D]
        # transformers' additive mask: the dtype's minimum, so all-padding rows stay finite
        bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]  # [B,1,1,Lk]
        buckets = jnp.asarray(relative_buckets(ids.shape[1], cfg.num_buckets, cfg.max_distance))
        layers = nn.scan(
            UMT5Layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
        )
        x, _ = layers(cfg, name="layers")(x, bias, buckets)
        x = RMSNorm(cfg.eps, name="final_norm")(x)
        return jnp.where(mask[..., None], x, 0.0)
