"""Transcript (speech content) encoder with F5-TTS's structure: character embedding, sinusoidal
positions, ConvNeXt-V2 blocks, then a projection to the audio tower's width."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.model.config import TranscriptConfig
from harmony_jax.model.layers import LayerNorm32, dense


def sinusoidal_table(length: int, dim: int, theta: float = 10000.0) -> np.ndarray:
    """[length, dim] = [cos | sin] of position * inv_freq (F5-TTS `precompute_freqs_cis`)."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2)[: dim // 2] / dim)
    ang = np.outer(np.arange(length), inv_freq)
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=-1).astype(np.float32)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2) over the sequence axis."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None, "mlp"))
        gamma = self.param("gamma", init, (1, 1, dim))
        beta = self.param("beta", init, (1, 1, dim))
        sumsq = jnp.sum(jnp.square(x), axis=1, keepdims=True)
        # sqrt has an infinite slope at 0 (an all-padding transcript): use torch.norm's 0 there.
        gx = jnp.where(sumsq > 0, jnp.sqrt(jnp.where(sumsq > 0, sumsq, 1.0)), 0.0)
        nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
        return gamma * (x * nx) + beta + x


class ConvNeXtV2Block(nn.Module):
    mult: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        h = nn.Conv(
            dim,
            (7,),
            padding=3,
            feature_group_count=dim,
            name="dwconv",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        )(x)
        h = LayerNorm32(1e-6, affine=True, name="norm")(h)
        h = dense(
            dim * self.mult,
            ("embed", "mlp"),
            name="pwconv1",
            dtype=jnp.float32,
            param_dtype=jnp.float32,
        )(h)
        h = GRN(name="grn")(jax.nn.gelu(h, approximate=False))
        h = dense(
            dim, ("mlp", "embed"), name="pwconv2", dtype=jnp.float32, param_dtype=jnp.float32
        )(h)
        return x + h


class TranscriptEncoder(nn.Module):
    """Character ids [B, Lc] (0 = padding) -> embeddings [B, Lc, out_dim], zero on padding.

    Up to `proj` this is F5-TTS's `TextEmbedding` (v1: `mask_padding=True`) with ids = F5's
    token index + 1, so `convert.f5_text` fills it from an F5-TTS checkpoint; `features_only`
    returns that part's output [B, Lc, dim] (what F5-TTS's DiT consumes).
    """

    config: TranscriptConfig
    out_dim: int

    @nn.compact
    def __call__(self, ids: jax.Array, features_only: bool = False) -> jax.Array:
        cfg = self.config
        if ids.shape[1] > cfg.max_len:
            raise ValueError(
                f"transcript has {ids.shape[1]} characters; "
                f"model.transcript.max_len is {cfg.max_len}"
            )
        keep = (ids > 0)[..., None]
        x = nn.Embed(
            cfg.vocab_size,
            cfg.dim,
            name="char_embed",
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
        )(ids)
        x = x + sinusoidal_table(cfg.max_len, cfg.dim)[: ids.shape[1]]
        for i in range(cfg.conv_layers):
            x = ConvNeXtV2Block(cfg.conv_mult, name=f"convnext_{i}")(x * keep)
        x = x * keep  # [B, Lc, dim]
        if features_only:
            return x
        return dense(
            self.out_dim,
            ("embed", "embed_out"),
            name="proj",
            dtype=jnp.float32,
            param_dtype=jnp.float32,
        )(x)
