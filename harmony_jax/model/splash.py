"""The Pallas splash-attention kernel that ships in jax
(`jax.experimental.pallas.ops.tpu.splash_attention`) behind the model's attention contract.

What the model hands `dot_product_attention` (any lengths, a boolean mask broadcasting to
[B, N, Lq, Lk]) becomes what the kernel takes, per batch row:
  - a mask varying along the queries (GLDI's A2V / V2A band) becomes a block-sparse splash mask
    (`BandKernel`): the kernel computes a block only where the band touches it and skips the
    others (no matmul, no exp), the blocks it enters are masked inside. The model builds it once
    per geometry (`band_kernel`, beside `band_mask` in `cross_modal_geometry`) and hands it to
    every layer; a caller with only the mask gets it built per call;
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

import flax.linen as nn
import flax.struct
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
_GENERATION_BLOCKS = {"v5e": (512, 512, 512), "v5p": (1024, 1024, 512), "v6e": (2048, 2048, 512)}
_OTHER_BLOCKS = (512, 512, 512)  # other TPUs, and interpret mode off TPU


@dataclasses.dataclass(frozen=True)
class SplashBlocks:
    """`config.model.splash`: tile sizes (multiples of 128; 0 = this TPU generation's default),
    the tile along the audio axis of the GLDI bands, and whether dq, dk, dv come from one fused
    backward kernel."""

    block_q: int = 0
    block_kv: int = 0
    block_kv_compute: int = 0  # the slice of a kv block one matmul takes; divides block_kv
    # A2V's key block and V2A's query block (the audio axis, 157 latents at 5 s): 128 cuts it in
    # two, so blocks outside the +-window band exist and are skipped; >= the padded audio
    # length makes the band one dense column of blocks (nothing skipped, fewer grid steps).
    band_block: int = LANES
    fused_bwd: bool = False

    def __post_init__(self):
        for name in ("block_q", "block_kv", "block_kv_compute"):
            value = getattr(self, name)
            if value < 0 or value % LANES:
                raise ValueError(
                    f"config model.splash.{name}={value} is not 0 or a positive multiple of {LANES}"
                )
        if self.band_block <= 0 or self.band_block % LANES:
            raise ValueError(
                f"config model.splash.band_block={self.band_block} is not a "
                f"positive multiple of {LANES}"
            )
        if self.block_kv and self.block_kv_compute and self.block_kv % self.block_kv_compute:
            raise ValueError(
                f"config model.splash.block_kv_compute={self.block_kv_compute} "
                f"does not divide model.splash.block_kv={self.block_kv}"
            )


def tpu_generation() -> str | None:
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


def block_sizes(
    blocks: SplashBlocks, lq: int, lk: int, *, band_axis: str | None = None
) -> sk.BlockSizes:
    """The kernel's tile sizes for these lengths: the configured (or generation) blocks, cut to
    the padded lengths so a short sequence (157 audio latents) is one block, not a mostly
    padded 2048. `band_axis` ('q' for V2A, 'kv' for A2V) is a band's audio axis, tiled by
    `blocks.band_block` instead."""
    dq, dkv, dc = _GENERATION_BLOCKS.get(tpu_generation(), _OTHER_BLOCKS)
    bq = blocks.band_block if band_axis == "q" else blocks.block_q or dq
    bkv = blocks.band_block if band_axis == "kv" else blocks.block_kv or dkv
    bq, bkv = min(bq, _round_up(lq, LANES)), min(bkv, _round_up(lk, LANES))
    bc = math.gcd(bkv, min(blocks.block_kv_compute or dc, bkv))
    fused = blocks.fused_bwd
    return sk.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bc,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bc,
        block_q_dq=None if fused else bq,
        block_kv_dq=None if fused else bkv,
        use_fused_bwd_kernel=fused,
    )


@flax.struct.dataclass
class BandKernel:
    """A mask varying along the queries (a GLDI band) as the splash kernel reads it: which
    blocks to compute, compute masked or skip, for the forward, dq and dkv passes, and the
    masked blocks' entries (`MaskInfo`s, a leading batch axis on each array), plus which query
    rows attend to any key. Built from the mask's values, so per-sample times and traced masks
    are exact; built once per geometry (`band_kernel`), read by every layer."""

    masks: tuple  # (fwd, dq | None, dkv) MaskInfo, their static `is_dynamic_mask` flag dropped
    has_key: jax.Array  # [B, N|1, Lq] bool
    lengths: tuple = flax.struct.field(pytree_node=False)  # (Lq, Lk) before padding
    kernel_args: tuple = flax.struct.field(pytree_node=False)  # make_splash_mha's static args

    @property
    def sizes(self) -> sk.BlockSizes:
        return dict(self.kernel_args)["block_sizes"]

    def kernel(self, masks: tuple) -> sk.SplashAttentionKernel:
        """The kernel of one batch row's `masks` (a slice of `self.masks`, under vmap)."""
        # the kernel reads its 'dynamic' flag as a Python bool, so it cannot ride in an array
        flag = lambda info: None if info is None else info._replace(is_dynamic_mask=True)
        return sk.SplashAttentionKernel(*map(flag, masks), **dict(self.kernel_args))


def band_kernel(
    mask: jax.Array, sizes: sk.BlockSizes, *, interpret: bool | None = None
) -> BandKernel:
    """The `BandKernel` of a boolean [B, N|1, Lq, Lk] mask for these tile sizes: padded keys
    off, padded queries repeating the last real row."""
    interpret = jax.default_backend() != "tpu" if interpret is None else interpret
    b, _, lq, lk = mask.shape
    rows = _pad_mask(mask, _round_up(lq, sizes.block_q), _round_up(lk, sizes.block_kv))
    static = {}

    def row(m):  # [N|1, lq, lk] -> the kernel's MaskInfos
        kernel = sk.make_splash_mha(
            m, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )
        static.update(kernel.kwargs)
        drop = lambda info: None if info is None else info._replace(is_dynamic_mask=None)
        return tuple(map(drop, (kernel.fwd_mask_info, kernel.dq_mask_info, kernel.dkv_mask_info)))

    masks = jax.vmap(row)(rows)
    return BandKernel(
        masks=masks,
        has_key=mask.any(-1),
        lengths=(lq, lk),
        kernel_args=tuple(sorted(static.items())),
    )


def computed_blocks(mask: jax.Array, sizes: sk.BlockSizes) -> np.ndarray:
    """[Lq/bq, Lk/bkv] bool: the blocks the forward kernel computes for a [Lq, Lk] mask padded
    as `splash_attention` pads it (the rest are skipped)."""
    band = band_kernel(mask[None, None], sizes, interpret=True)
    return np.asarray(band.masks[0].block_mask[0, 0]) > 0


def _pad_mask(mask: jax.Array, lq: int, lk: int) -> jax.Array:
    """[..., Lq, Lk] -> [..., lq, lk]: padded keys off; padded queries repeat the last real row
    (so they enter no block the real rows do not, and never have an empty row)."""
    pad = [(0, 0)] * (mask.ndim - 2)
    mask = jnp.pad(mask, pad + [(0, lq - mask.shape[-2]), (0, 0)], mode="edge")
    return jnp.pad(mask, pad + [(0, 0), (0, lk - mask.shape[-1])])


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    band: BandKernel | None = None,
    blocks: SplashBlocks = SplashBlocks(),
    interpret: bool | None = None,
) -> jax.Array:
    """`dot_product_attention`'s contract (q [B, Lq, N, Hd], k/v [B, Lk, N, Hd], bool mask
    broadcasting to [B, N, Lq, Lk]) through the splash kernel; `interpret` defaults to off-TPU.

    `band`: `mask`'s `BandKernel`, built once per geometry, for its tiles and its block map;
    without it, a mask that varies along the queries is turned into one here, per call.
    """
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    if not lq * lk:  # nothing to tile (the style path without a reference voice)
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    interpret = jax.default_backend() != "tpu" if interpret is None else interpret
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # [B|1, N|1, Lq|1, Lk|1]
    if band is None and mask is not None and (mask.shape[1] > 1 or mask.shape[2] > 1):
        rows = jnp.broadcast_to(mask, (b, mask.shape[1], lq, lk))
        band = band_kernel(rows, block_sizes(blocks, lq, lk), interpret=interpret)
    if band is None:  # keys only (padding of text, transcript or blocks): segment ids
        local = functools.partial(
            _keys_attention, sizes=block_sizes(blocks, lq, lk), interpret=interpret
        )
        return _on_local_shards(local, q, k, v, mask)
    if band.lengths != (lq, lk) or band.has_key.shape[0] != b:
        raise ValueError(
            f"splash band of {band.has_key.shape[0]} rows of {band.lengths} "
            f"(queries, keys) for attention of {b} rows of {(lq, lk)}"
        )
    return _on_local_shards(_band_attention, q, k, v, band)


def _heads_first(q, k, v, sizes: sk.BlockSizes):
    """[B, L, N, Hd] -> [B, N, L padded to whole blocks, Hd]; q scaled (the kernel does not)."""
    scaled = (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)
    pad = lambda x, block: jnp.pad(
        x, ((0, 0), (0, _round_up(x.shape[1], block) - x.shape[1]), (0, 0), (0, 0))
    ).swapaxes(1, 2)
    return pad(scaled, sizes.block_q), pad(k, sizes.block_kv), pad(v, sizes.block_kv)


def _unpad(out: jax.Array, v: jax.Array, lq: int, has_key: jax.Array) -> jax.Array:
    """[B, N, Lq padded, Hd] -> [B, Lq, N, Hd]; rows with no key (`has_key` [B|1, N|1, Lq|1]
    False) get the 'xla' kernel's uniform weights over the real keys."""
    out = out.swapaxes(1, 2)[:, :lq]
    mean = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(out.dtype)
    return jnp.where(has_key.swapaxes(1, 2)[..., None], out, mean)


def _band_attention(q, k, v, band: BandKernel) -> jax.Array:
    """`splash_attention` with a band, on one device's rows and heads: the block-sparse kernel
    of each batch row."""
    qt, kt, vt = _heads_first(q, k, v, band.sizes)
    out = jax.vmap(lambda masks, q, k, v: band.kernel(masks)(q, k, v))(band.masks, qt, kt, vt)
    return _unpad(out, v, q.shape[1], band.has_key)


def _keys_attention(q, k, v, mask, *, sizes: sk.BlockSizes, interpret: bool) -> jax.Array:
    """`splash_attention` with no mask or a key mask, on one device's rows and heads: dense
    blocks, masked keys (and the padding) as segment ids."""
    b, lq, _, _ = q.shape
    lk = k.shape[1]
    qt, kt, vt = _heads_first(q, k, v, sizes)
    lq_pad, lk_pad = qt.shape[2], kt.shape[2]
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([sm.FullMask((lq_pad, lk_pad))]),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    if mask is None and lk_pad == lk:
        return jax.vmap(kernel)(qt, kt, vt).swapaxes(1, 2)[:, :lq]
    keys = jnp.ones((1, lk), bool) if mask is None else mask[:, 0, 0, :]
    keys = jnp.pad(jnp.broadcast_to(keys, (b, lk)), ((0, 0), (0, lk_pad - lk)))
    segments = sk.SegmentIds(q=jnp.ones((b, lq_pad), jnp.int32), kv=keys.astype(jnp.int32))
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(qt, kt, vt, segments)
    return _unpad(out, v, lq, jnp.ones((1, 1, 1), bool) if mask is None else mask.any(-1))


def _mesh_axes(mesh, logical: str, size: int) -> tuple[str, ...]:
    """The automatic mesh axes (> 1 device) the logical axis maps to, if they split `size`."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    manual = set(mesh.manual_axes)
    axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in manual)
    return axes if size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def _on_local_shards(fn, q, k, v, extra):
    """`fn(q, k, v, extra)` per device over the batch and head splits of the mesh in context
    (logical 'batch' and 'act_heads'); directly where there is no mesh or no split. `extra`
    (a mask or a `BandKernel`; None) has arrays [B|1, N|1, ...], split where they are not 1."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, extra)
    batch = _mesh_axes(mesh, "batch", q.shape[0])
    heads = _mesh_axes(mesh, "act_heads", q.shape[2])
    if not batch + heads:
        return fn(q, k, v, extra)
    spec = P(batch or None, None, heads or None, None)
    if extra is None:
        local = lambda q, k, v: fn(q, k, v, None)
        specs, args = (spec,) * 3, (q, k, v)
    else:
        local = fn
        extra_spec = jax.tree.map(
            lambda x: P(batch if x.shape[0] > 1 else None, heads if x.shape[1] > 1 else None), extra
        )
        specs, args = (spec,) * 3 + (extra_spec,), (q, k, v, extra)
    return jax.shard_map(
        local, in_specs=specs, out_specs=spec, axis_names=set(batch + heads), check_vma=False
    )(*args)
