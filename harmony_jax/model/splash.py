"""The Pallas splash-attention kernel that ships in jax
(`jax.experimental.pallas.ops.tpu.splash_attention`) behind the model's attention contract.

What the model hands `dot_product_attention` (any lengths, a boolean mask broadcasting to
[B, N, Lq, Lk]) becomes what the kernel takes, per batch row:
  - a mask varying along the queries (GLDI's A2V / V2A band) becomes a block-sparse splash mask:
    the kernel computes a block only where the band touches it and skips the others (no matmul,
    no exp), the blocks it enters are masked inside;
  - a key mask (text or transcript padding) becomes segment ids (real keys 1, others 0);
  - lengths are padded to whole blocks, and padded keys are masked (never attended).
A query row with no key to attend to gets the mean of the values, as the 'xla' kernel gives it.
Batch and head splits of the mesh in context run the kernel on each device's own rows and heads
(`shard_map`), so the partitioner never gathers what a custom kernel cannot split.
Off TPU the same kernel runs in Pallas interpret mode: exact, slow, for tests and `plan`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

LANES = 128  # every splash block is a multiple of the TPU lane width

# (block_q, block_kv, block_kv_compute) per TPU generation: MaxText's 512 on v5e; larger blocks
# where VMEM and the MXU are larger (MaxDiffusion's Wan runs use 2k-3k blocks on v6e). Starting
# points, not tuned here; `config.model.splash` overrides them.
_GENERATION_BLOCKS = {"v5e": (512, 512, 512), "v5p": (1024, 1024, 512),
                      "v6e": (2048, 2048, 512)}
_OTHER_BLOCKS = (512, 512, 512)  # other TPUs, and interpret mode off TPU


@dataclasses.dataclass(frozen=True)
class SplashBlocks:
    """`config.model.splash`: tile sizes (multiples of 128; 0 = this TPU generation's default)
    and whether dq, dk, dv come from one fused backward kernel."""

    block_q: int = 0
    block_kv: int = 0
    block_kv_compute: int = 0  # the slice of a kv block one matmul takes; divides block_kv
    fused_bwd: bool = False

    def __post_init__(self):
        for name in ("block_q", "block_kv", "block_kv_compute"):
            value = getattr(self, name)
            if value < 0 or value % LANES:
                raise ValueError(f"config model.splash.{name}={value} is not 0 or a positive "
                                 f"multiple of {LANES}")
        if self.block_kv and self.block_kv_compute and self.block_kv % self.block_kv_compute:
            raise ValueError(f"config model.splash.block_kv_compute={self.block_kv_compute} "
                             f"does not divide model.splash.block_kv={self.block_kv}")


def tpu_generation() -> Optional[str]:
    """'v5e' | 'v5p' | 'v6e' from the first device's kind, None off TPU or for others."""
    device = jax.devices()[0]
    if device.platform != "tpu":
        return None
    kind = device.device_kind.lower()
    if "v6" in kind:
        return "v6e"
    if "v5" in kind:
        return "v5e" if ("lite" in kind or "v5e" in kind) else "v5p"
    return None


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def block_sizes(blocks: SplashBlocks, lq: int, lk: int) -> sk.BlockSizes:
    """The kernel's tile sizes for these lengths: the configured (or generation) blocks, cut to
    the padded lengths so a short sequence (157 audio latents) is one block, not a mostly
    padded 2048."""
    dq, dkv, dc = _GENERATION_BLOCKS.get(tpu_generation(), _OTHER_BLOCKS)
    bq = min(blocks.block_q or dq, _round_up(lq, LANES))
    bkv = min(blocks.block_kv or dkv, _round_up(lk, LANES))
    bc = math.gcd(bkv, min(blocks.block_kv_compute or dc, bkv))
    fused = blocks.fused_bwd
    return sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bc,
                         block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bc,
                         block_q_dq=None if fused else bq, block_kv_dq=None if fused else bkv,
                         use_fused_bwd_kernel=fused)


def _mask_kernel(mask: jax.Array, sizes: sk.BlockSizes, interpret: bool):
    """The splash kernel of a boolean [N|1, Lq, Lk] mask (block multiples), its block map built
    from the mask's values (so per-row times and traced masks are exact)."""
    kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)
    # `make_splash_mha` turns every field of its block map into an array; the 'dynamic' flag
    # must stay a Python bool for the kernel to read it under vmap.
    fix = lambda info: None if info is None else info._replace(is_dynamic_mask=True)
    return sk.SplashAttentionKernel(fix(kernel.fwd_mask_info), fix(kernel.dq_mask_info),
                                    fix(kernel.dkv_mask_info), **kernel.kwargs)


def computed_blocks(mask: jax.Array, sizes: sk.BlockSizes) -> np.ndarray:
    """[Lq/bq, Lk/bkv] bool: the blocks the forward kernel computes for a [Lq, Lk] mask padded
    as `splash_attention` pads it (the rest are skipped)."""
    lq, lk = mask.shape
    padded = _pad_mask(mask[None], _round_up(lq, sizes.block_q), _round_up(lk, sizes.block_kv))
    info = _mask_kernel(padded, sizes, interpret=True).fwd_mask_info
    return np.asarray(info.block_mask[0]) > 0


def _pad_mask(mask: jax.Array, lq: int, lk: int) -> jax.Array:
    """[..., Lq, Lk] -> [..., lq, lk]: padded keys off; padded queries repeat the last real row
    (so they enter no block the real rows do not, and never have an empty row)."""
    pad = [(0, 0)] * (mask.ndim - 2)
    mask = jnp.pad(mask, pad + [(0, lq - mask.shape[-2]), (0, 0)], mode="edge")
    return jnp.pad(mask, pad + [(0, 0), (0, lk - mask.shape[-1])])


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     mask: Optional[jax.Array] = None, blocks: SplashBlocks = SplashBlocks(),
                     interpret: Optional[bool] = None) -> jax.Array:
    """`dot_product_attention`'s contract (q [B, Lq, N, Hd], k/v [B, Lk, N, Hd], bool mask
    broadcasting to [B, N, Lq, Lk]) through the splash kernel; `interpret` defaults to off-TPU."""
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    if not lq * lk:  # nothing to tile (the style path without a reference voice)
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    interpret = jax.default_backend() != "tpu" if interpret is None else interpret
    sizes = block_sizes(blocks, lq, lk)
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # [B|1, N|1, Lq|1, Lk|1]
    local = functools.partial(_local_attention, sizes=sizes, interpret=interpret)
    return _on_local_shards(local, q, k, v, mask)


def _local_attention(q, k, v, mask, *, sizes: sk.BlockSizes, interpret: bool) -> jax.Array:
    """`splash_attention` on one device's rows and heads."""
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    lq_pad, lk_pad = _round_up(lq, sizes.block_q), _round_up(lk, sizes.block_kv)
    scaled = (q.astype(jnp.float32) * hd ** -0.5).astype(q.dtype)  # the kernel does not scale
    heads_first = lambda x, length: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0),
                                                (0, 0))).swapaxes(1, 2)  # [B, N, L, Hd]
    qt, kt, vt = heads_first(scaled, lq_pad), heads_first(k, lk_pad), heads_first(v, lk_pad)

    per_query = mask is not None and (mask.shape[1] > 1 or mask.shape[2] > 1)
    if per_query:  # the band: a block-sparse mask per batch row
        rows = jnp.broadcast_to(mask, (b, mask.shape[1], lq, lk))
        rows = _pad_mask(rows, lq_pad, lk_pad)
        out = jax.vmap(lambda m, q, k, v: _mask_kernel(m, sizes, interpret)(q, k, v))(
            rows, qt, kt, vt)
    else:  # keys only (padding of text, transcript or blocks): segment ids, dense blocks
        kernel = sk.make_splash_mha(sm.MultiHeadMask([sm.FullMask((lq_pad, lk_pad))]),
                                    block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
        if mask is None and lk_pad == lk:
            out = jax.vmap(kernel)(qt, kt, vt)
        else:
            keys = jnp.ones((1, lk), bool) if mask is None else mask[:, 0, 0, :]
            keys = jnp.pad(jnp.broadcast_to(keys, (b, lk)), ((0, 0), (0, lk_pad - lk)))
            segments = sk.SegmentIds(q=jnp.ones((b, lq_pad), jnp.int32),
                                     kv=keys.astype(jnp.int32))
            out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(
                qt, kt, vt, segments)
    out = out.swapaxes(1, 2)[:, :lq]  # [B, Lq, N, Hd]
    if mask is None:
        return out
    # rows with no key: the 'xla' kernel's uniform weights over the real keys
    has_key = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], lq, lk)).any(-1)
    mean = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(out.dtype)
    return jnp.where(has_key.swapaxes(1, 2)[..., None], out, mean)


def _mesh_axes(mesh, logical: str, size: int) -> tuple[str, ...]:
    """The automatic mesh axes (> 1 device) the logical axis maps to, if they split `size`."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    manual = set(mesh.manual_axes)
    axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in manual)
    return axes if size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def _on_local_shards(fn, q, k, v, mask):
    """`fn(q, k, v, mask)` per device over the batch and head splits of the mesh in context
    (logical 'batch' and 'act_heads'); directly where there is no mesh or no split."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, mask)
    batch = _mesh_axes(mesh, "batch", q.shape[0])
    heads = _mesh_axes(mesh, "act_heads", q.shape[2])
    if not batch + heads:
        return fn(q, k, v, mask)
    spec = P(batch or None, None, heads or None, None)
    if mask is None:
        local = lambda q, k, v: fn(q, k, v, None)
        specs, args = (spec,) * 3, (q, k, v)
    else:
        local = fn
        mask_spec = P(batch if mask.shape[0] > 1 else None, heads if mask.shape[1] > 1 else None,
                      None, None)
        specs, args = (spec,) * 3 + (mask_spec,), (q, k, v, mask)
    return jax.shard_map(local, in_specs=specs, out_specs=spec,
                         axis_names=set(batch + heads), check_vma=False)(*args)
