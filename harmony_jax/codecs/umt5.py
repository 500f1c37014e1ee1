"""The umT5 encoder (transformers `UMT5EncoderModel`; Wan2.2's text encoder is umT5-XXL) in linen,
and the frozen text encoder built on it with the checkpoint's sentencepiece tokenizer.

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
import functools
import html
import logging
import math
import re
from collections.abc import Sequence

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


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (html unescaped twice, whitespace collapsed) without its
    `ftfy.fix_text`, which only repairs mis-decoded text."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit keys on it
class UMT5TextEncoder:
    """Sentencepiece ids (+ end token, padded with 0 to `max_len`) -> frozen umT5 embeddings.

    `path`: a transformers / diffusers folder (`text_encoder/` with safetensors, tokenizer in
    `tokenizer/`, alongside or inside), the original `models_t5_umt5-xxl-enc-bf16.pth` (tokenizer
    in `google/umt5-xxl/` beside it) or a `python -m harmony_jax.convert umt5` checkpoint. The
    tokenizer is read on the first `tokenize`, the weights (`params`) on first use; they never
    join the trained parameters.
    """

    path: str
    max_len: int
    config: UMT5Config = UMT5Config()
    trainable: bool = dataclasses.field(default=False, init=False)

    @property
    def dim(self) -> int:
        return self.config.d_model

    @functools.cached_property
    def module(self) -> UMT5Encoder:
        return UMT5Encoder(self.config)

    @functools.cached_property
    def params(self):
        from harmony_jax.codecs.umt5_weights import load_umt5

        # First use may be inside a trace (jit, eval_shape): load and place concrete arrays.
        with jax.ensure_compile_time_eval():
            return jax.tree.map(jnp.asarray, load_umt5(self.path, self.config))

    @functools.cached_property
    def _sentencepiece(self):
        import sentencepiece

        from harmony_jax.codecs.umt5_weights import load_spiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=load_spiece(self.path))
        if processor.pad_id() != PAD_ID:
            raise ValueError(
                f"the tokenizer of {self.path} pads with id {processor.pad_id()}, "
                f"umT5 with {PAD_ID}"
            )
        return processor

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        sp = self._sentencepiece
        ids = np.full((len(texts), self.max_len), PAD_ID, np.int32)  # [B, L]
        for row, text in enumerate(texts):
            pieces = sp.encode(clean_prompt(text))
            if len(pieces) > self.max_len - 1:
                logging.warning(
                    "Text prompt truncated to %d tokens (config.codecs.text.max_len=%d): %r",
                    self.max_len - 1,
                    self.max_len,
                    text,
                )
                pieces = pieces[: self.max_len - 1]
            ids[row, : len(pieces) + 1] = [*pieces, sp.eos_id()]
        return ids, ids != PAD_ID
