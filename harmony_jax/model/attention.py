"""The one attention function (kernel chosen by config) and the Wan-style attention layer."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from harmony_jax.model.layers import RMSNorm, dense
from harmony_jax.model.rope import apply_rope
from harmony_jax.model.splash import BandKernel, SplashBlocks, splash_attention
from harmony_jax.parallel import ulysses

Dtype = Any

# Every value of `config.model.attention` (model/config.py validates against it).
IMPLEMENTATIONS = ("xla", "cudnn", "blockwise", "splash", "auto")

BLOCK = 512  # query / key block of `blockwise_attention`
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # as jax.nn.dot_product_attention's 'xla'


def uses_splash(implementation: str) -> bool:
    """Whether `config.model.attention` runs the splash kernel on this backend."""
    return implementation == "splash" or (
        implementation == "auto" and jax.default_backend() == "tpu"
    )


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    implementation: str = "xla",
    splash_blocks: SplashBlocks = SplashBlocks(),  # noqa: B008 (frozen)
    splash_band: BandKernel | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for q [B, Lq, N, Hd], k/v [B, Lk, N, Hd].

    `mask` (bool, True = attend) broadcasts to [B, N, Lq, Lk]. `implementation` is
    `config.model.attention`: 'xla', 'cudnn' (fused flash kernel on NVIDIA GPUs), 'blockwise'
    (`blockwise_attention` everywhere, so benchmarks can set it against the others), 'splash'
    (the Pallas TPU splash kernel, `model.splash`; interpreted off TPU, so it is slow there) or
    'auto': splash on TPU, JAX's pick on GPU (cuDNN's flash kernel where it applies), elsewhere
    `blockwise_attention` once the scores outgrow a few blocks, so long sequences never hold
    [Lq, Lk] scores per head (a 27k-token video would need 71 GB of them per sample). Every
    attention in the model goes through here. `splash_band` is `mask` as the splash kernel's
    block map, built once per geometry (GLDI's bands); the other kernels read `mask`.
    """
    backend = jax.default_backend()
    if uses_splash(implementation):
        return splash_attention(q, k, v, mask=mask, band=splash_band, blocks=splash_blocks)
    if implementation == "blockwise" or (
        implementation == "auto"
        and backend != "gpu"
        and q.shape[1] * k.shape[1] > 4 * BLOCK * BLOCK
    ):
        return blockwise_attention(q, k, v, mask=mask)
    impl = None if implementation == "auto" else implementation
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def blockwise_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None, block: int = BLOCK
) -> jax.Array:
    """`dot_product_attention` block by block with an online softmax: flash attention's memory
    (one [B, N, block, block] score block live) in plain XLA, so it runs on any backend.

    Queries go in blocks (`lax.map`); keys stream past each in blocks with a running max and sum.
    Both levels are rematerialised, so the backward pass too holds one block of scores at a time
    (at the price of recomputing the forward). Same contract as the 'xla' kernel.
    """
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    if not lq * lk:  # nothing to split (the style path without a reference voice has no queries)
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    bq, bk = min(block, lq), min(block, lk)
    nq, nk = -(-lq // bq), -(-lk // bk)
    mask = jnp.ones((1, 1, 1, 1), bool) if mask is None else mask
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # [b|1, N|1, Lq|1, Lk|1]
    if mask.shape[2] > 1:
        mask = _pad_to(mask, 2, nq * bq, True)
    if mask.shape[3] > 1:
        mask = _pad_to(mask, 3, nk * bk, False)
    blocks = lambda x, size, count: (
        _pad_to(x, 1, size * count).reshape(b, count, size, n, hd).swapaxes(0, 1)
    )  # [count, B, size, N, Hd]
    qs, ks, vs = blocks(q, bq, nq), blocks(k, bk, nk), blocks(v, bk, nk)
    scale = hd**-0.5

    def query_block(args):
        i, qb = args  # qb [B, bq, N, Hd]
        mq = mask if mask.shape[2] == 1 else jax.lax.dynamic_slice_in_dim(mask, i * bq, bq, 2)

        def key_block(carry, xs):
            top, total, acc = carry  # [B, N, bq], [B, N, bq], [B, bq, N, Hd] float32
            j, kb, vb = xs
            s = (
                jnp.einsum("bqnh,bknh->bnqk", qb, kb, preferred_element_type=jnp.float32) * scale
            )  # [B, N, bq, bk]
            mk = mq if mq.shape[3] == 1 else jax.lax.dynamic_slice_in_dim(mq, j * bk, bk, 3)
            s = jnp.where(mk, s, _MASKED)
            s = jnp.where(j * bk + jnp.arange(bk) < lk, s, -jnp.inf)  # padded keys: weight 0
            new_top = jnp.maximum(top, s.max(-1))
            p = jnp.exp(s - new_top[..., None])
            decay = jnp.exp(top - new_top)
            total = total * decay + p.sum(-1)
            acc = acc * decay.swapaxes(1, 2)[..., None] + jnp.einsum(
                "bnqk,bknh->bqnh", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
            )
            return (new_top, total, acc), None

        init = (
            jnp.full((b, n, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, n, bq), jnp.float32),
            jnp.zeros((b, bq, n, hd), jnp.float32),
        )
        (_, total, acc), _ = jax.lax.scan(jax.checkpoint(key_block), init, (jnp.arange(nk), ks, vs))
        return (acc / total.swapaxes(1, 2)[..., None]).astype(q.dtype)

    out = jax.lax.map(jax.checkpoint(query_block), (jnp.arange(nq), qs))  # [nq, B, bq, N, Hd]
    return out.swapaxes(0, 1).reshape(b, nq * bq, n, hd)[:, :lq]


class Attention(nn.Module):
    """Multi-head attention with Wan's qk-RMSNorm across heads and optional RoPE on q and k.

    Self-attention when `context` is None, cross-attention otherwise. `zero_out` starts the output
    projection at zero (interaction layers leave a pretrained tower unchanged at step 0).
    Unmasked self-attention over tokens split along a mesh axis ('act_length' rule) runs
    Ulysses-style (`parallel.ulysses`): context parallelism for long videos.
    """

    dim: int
    heads: int
    eps: float = 1e-6
    zero_out: bool = False
    implementation: str = "xla"
    splash_blocks: SplashBlocks = SplashBlocks()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        q_angles: jax.Array | None = None,
        k_angles: jax.Array | None = None,
        mask: jax.Array | None = None,
        splash_band: BandKernel | None = None,
    ) -> jax.Array:
        self_attention, context = context is None, x if context is None else context
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense(self.dim, ("embed", "heads"), name="q", **kw)(x)
        k = dense(self.dim, ("kv_embed", "heads"), name="k", **kw)(context)
        v = dense(self.dim, ("kv_embed", "heads"), name="v", **kw)(context)
        q = RMSNorm(self.eps, param_dtype=self.param_dtype, name="norm_q")(q)
        k = RMSNorm(self.eps, param_dtype=self.param_dtype, name="norm_k")(k)
        head_dim = self.dim // self.heads
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, head_dim)  # [B, L, N, Hd]
        q, k, v = split(q), split(k), split(v)
        if q_angles is not None:
            q = apply_rope(q, q_angles)
        if k_angles is not None:
            k = apply_rope(k, k_angles)
        q = nn.with_logical_constraint(q, ("batch", "act_length", "act_heads", "kv"))
        attend = functools.partial(
            dot_product_attention,
            implementation=self.implementation,
            splash_blocks=self.splash_blocks,
            splash_band=splash_band,
        )
        axis = None
        if self_attention and mask is None:
            axis = ulysses.sequence_axis(q.shape[1], self.heads)
        if axis is None:
            out = attend(q, k, v, mask=mask)  # [B, Lq, N, Hd]
        else:
            out = ulysses.ulysses_attention(attend, q, k, v, axis)
        out = out.reshape(*out.shape[:-2], self.dim)
        return dense(self.dim, ("heads", "embed"), name="out", zero_init=self.zero_out, **kw)(out)
