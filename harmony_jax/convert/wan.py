"""The Wan2.2 DiT <-> our video tower: import from the diffusers or the original Wan layout,
export back to either (round trips, parity tests), `convert wan`, and `load_video_tower`.

Our video tower is Wan's DiT layer for layer; only names and layouts differ: a torch Linear
weight is [out, in], our Dense kernel [in, out]; the Conv3d patch embedding [D, C, pt, ph, pw] is
our Dense on patches flattened in (pt, ph, pw, c) order (and proj_out's features are (pt, ph, pw,
c) on both sides); per-layer parameters are stacked on axis 0 when the layers are scanned.

Inside this module the tower is a flat dict {path under params['dit']: array}, per-layer paths
written 'layers/video_block/...' with arrays stacked [depth, ...] whether or not the model scans
its layers. Converted checkpoints store exactly that tree.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.model.inputs import example_inputs
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

Params = Any
LAYOUTS = ("diffusers", "original")
_ROOTS = ("video_patch_embed", "video_time", "video_text_embedder", "video_head")
_LAYER = "layers/video_block/"
_UNROLLED = re.compile(r"layers_(\d+)$")


def _dense(ours: str, diffusers: str, original: str) -> list[tuple[str, str, str, str]]:
    return [
        (f"{ours}/kernel", f"{diffusers}.weight", f"{original}.weight", "linear"),
        (f"{ours}/bias", f"{diffusers}.bias", f"{original}.bias", "copy"),
    ]


def _attention(ours: str, diffusers: str, original: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for o, d, w in (
        ("q", "to_q", "q"),
        ("k", "to_k", "k"),
        ("v", "to_v", "v"),
        ("out", "to_out.0", "o"),
    ):
        rows += _dense(f"{ours}/{o}", f"{diffusers}.{d}", f"{original}.{w}")
    for norm in ("norm_q", "norm_k"):
        rows.append(
            (
                f"{ours}/{norm}/scale",
                f"{diffusers}.{norm}.weight",
                f"{original}.{norm}.weight",
                "copy",
            )
        )
    return rows


# (our path, diffusers key, original Wan key, kind); the mapping of diffusers'
# `convert_wan_transformer_to_diffusers`, read the other way.
_TOWER_RULES = (
    ("video_patch_embed/kernel", "patch_embedding.weight", "patch_embedding.weight", "conv"),
    ("video_patch_embed/bias", "patch_embedding.bias", "patch_embedding.bias", "copy"),
    *_dense(
        "video_time/time_embedder/fc1",
        "condition_embedder.time_embedder.linear_1",
        "time_embedding.0",
    ),
    *_dense(
        "video_time/time_embedder/fc2",
        "condition_embedder.time_embedder.linear_2",
        "time_embedding.2",
    ),
    *_dense("video_time/time_proj", "condition_embedder.time_proj", "time_projection.1"),
    *_dense(
        "video_text_embedder/fc1", "condition_embedder.text_embedder.linear_1", "text_embedding.0"
    ),
    *_dense(
        "video_text_embedder/fc2", "condition_embedder.text_embedder.linear_2", "text_embedding.2"
    ),
    ("video_head/scale_shift_table", "scale_shift_table", "head.modulation", "copy"),
    *_dense("video_head/proj_out", "proj_out", "head.head"),
)
# Per layer: ours under 'layers/video_block/', upstream under 'blocks.{i}.'. Wan's original names
# its cross-attention norm `norm3` (diffusers: `norm2`); the FFN norm has no parameters.
_BLOCK_RULES = (
    ("scale_shift_table", "scale_shift_table", "modulation", "copy"),
    *_attention("self_attn", "attn1", "self_attn"),
    *_attention("cross_attn", "attn2", "cross_attn"),
    ("norm2/ln/scale", "norm2.weight", "norm3.weight", "copy"),
    ("norm2/ln/bias", "norm2.bias", "norm3.bias", "copy"),
    *_dense("ffn/fc1", "ffn.net.0.proj", "ffn.0"),
    *_dense("ffn/fc2", "ffn.net.2", "ffn.2"),
)


def _rules(layout: str) -> dict[str, tuple[str, str]]:
    """{our path: (upstream key, with '{i}' for the layer, kind)} of one layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"Wan layout {layout!r} is not one of {LAYOUTS}")
    col = LAYOUTS.index(layout) + 1
    rules = {r[0]: (r[col], r[3]) for r in _TOWER_RULES}
    rules.update({_LAYER + r[0]: ("blocks.{i}." + r[col], r[3]) for r in _BLOCK_RULES})
    return rules


# ---- our side: the video tower of a params['dit'] tree, flat and with layers stacked


def _num_unrolled(dit: Params) -> int:
    return sum(1 for k in dit if _UNROLLED.match(k))


def tower_spec(dit: Params) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of every video-tower leaf of `dit` (arrays or abstract), layers stacked."""
    flat = traverse_util.flatten_dict(dit, sep="/")
    spec = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype)
        for k, v in flat.items()
        if k.split("/")[0] in _ROOTS or k.startswith(_LAYER)
    }
    depth = _num_unrolled(dit)
    for k, v in flat.items():
        if k.startswith("layers_0/video_block/"):
            spec[_LAYER + k.split("/", 2)[2]] = jax.ShapeDtypeStruct((depth, *v.shape), v.dtype)
    return spec


def tower_arrays(dit: Params) -> dict[str, np.ndarray]:
    """Host copies of the video-tower leaves of `dit`, layers stacked."""
    flat = traverse_util.flatten_dict(dit, sep="/")
    depth = _num_unrolled(dit)
    out = {}
    for k in tower_spec(dit):
        if depth and k.startswith(_LAYER):
            rest = k[len(_LAYER) :]
            out[k] = np.stack(
                [np.asarray(flat[f"layers_{i}/video_block/{rest}"]) for i in range(depth)]
            )
        else:
            out[k] = np.asarray(flat[k])
    return out


def with_tower(params: Params, tower: Mapping[str, np.ndarray]) -> Params:
    """`params` with its video-tower leaves replaced by `tower` (as `tower_spec` names them).

    Every other leaf is kept as it is. A replaced leaf takes the old leaf's dtype and, when the
    old leaf is a live array, its sharding: the result is laid out as the input was.
    """
    dit = params["dit"]
    flat = traverse_util.flatten_dict(dit, sep="/")
    depth = _num_unrolled(dit)

    def place(new, old):
        new = np.asarray(new, dtype=old.dtype)
        return jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new

    for k, value in tower.items():
        if depth and k.startswith(_LAYER):
            for i in range(depth):
                path = f"layers_{i}/video_block/{k[len(_LAYER) :]}"
                flat[path] = place(value[i], flat[path])
        else:
            flat[k] = place(value, flat[k])
    return {**params, "dit": traverse_util.unflatten_dict(flat, sep="/")}


# ---- upstream side: keys, shapes and the per-tensor transforms


def _to_ours(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":  # [out, in] -> [in, out]
        return x.T
    if kind == "conv":  # [D, C, pt, ph, pw] -> [(pt ph pw c), D]
        return x.transpose(2, 3, 4, 1, 0).reshape(-1, x.shape[0])
    return x


def _to_upstream(x: np.ndarray, kind: str, patch: tuple[int, int, int]) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv":
        return x.reshape(*patch, -1, x.shape[-1]).transpose(4, 3, 0, 1, 2)
    return x


def _upstream_shape(shape: tuple[int, ...], kind: str, patch: tuple[int, int, int]):
    if kind == "linear":
        return shape[::-1]
    if kind == "conv":
        return (shape[1], shape[0] // math.prod(patch), *patch)
    return shape


def _plan(spec: Mapping[str, jax.ShapeDtypeStruct], layout: str):
    """[(our path, upstream key template, kind)] covering `spec` exactly, or an error naming the
    video-tower parameters without a Wan counterpart (a model change the mapping has not seen)."""
    rules = _rules(layout)
    unmapped = sorted(spec.keys() - rules.keys())
    absent = sorted(rules.keys() - spec.keys())
    if unmapped or absent:
        raise ValueError(
            f"the video tower and the Wan mapping differ: parameters without an "
            f"upstream key {unmapped}; mapped parameters the model lacks {absent}"
        )
    return [(k, *rules[k]) for k in sorted(spec)]


def _expand(ours: str, key: str, spec: Mapping[str, jax.ShapeDtypeStruct]) -> list[str]:
    """The upstream key(s) of one of our leaves: one per layer for per-layer leaves."""
    if ours.startswith(_LAYER):
        return [key.format(i=i) for i in range(spec[ours].shape[0])]
    return [key]


def detect_layout(state: Mapping[str, Any], source: str = "state dict") -> str:
    """'diffusers' (has proj_out.weight) or 'original' (has head.head.weight)."""
    if "proj_out.weight" in state:
        return "diffusers"
    if "head.head.weight" in state:
        return "original"
    raise ValueError(
        f"{source} is neither a diffusers Wan transformer (no proj_out.weight) nor "
        f"an original Wan checkpoint (no head.head.weight); its first keys: "
        f"{sorted(state)[:8]}"
    )


def upstream_shapes(
    spec: Mapping[str, jax.ShapeDtypeStruct], patch: tuple[int, int, int], layout: str
) -> dict[str, tuple[int, ...]]:
    """{upstream key: shape} of the Wan checkpoint that fills the video tower `spec`."""
    expected = {}
    for ours, key, kind in _plan(spec, layout):
        shape = spec[ours].shape[1:] if ours.startswith(_LAYER) else spec[ours].shape
        for k in _expand(ours, key, spec):
            expected[k] = _upstream_shape(tuple(shape), kind, patch)
    return expected


def read_wan(
    state: Mapping[str, Any],
    spec: Mapping[str, jax.ShapeDtypeStruct],
    patch: tuple[int, int, int],
    *,
    layout: str = "auto",
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Our video tower (flat, layers stacked, dtypes of `spec`) from a Wan state dict.

    Keys and shapes are all checked before any tensor is read; every fault is named at once.
    """
    layout = detect_layout(state, source) if layout == "auto" else layout
    sd.check_keys(
        upstream_shapes(spec, patch, layout), sd.shapes(state), f"{source} ({layout} layout)"
    )
    tower = {}
    for ours, key, kind in _plan(spec, layout):
        arrays = [_to_ours(np.asarray(state[k]), kind) for k in _expand(ours, key, spec)]
        value = np.stack(arrays) if ours.startswith(_LAYER) else arrays[0]
        tower[ours] = value.astype(spec[ours].dtype)
    return tower


def import_wan(
    state: Mapping[str, Any],
    params: Params,
    cfg: ModelConfig,
    *,
    layout: str = "auto",
    source: str = "state dict",
) -> Params:
    """`params` ({'dit': ...}) with the video tower read from a Wan state dict, in either layout;
    every other leaf (audio tower, interaction, transcript, text) is kept as initialised."""
    tower = read_wan(
        state, tower_spec(params["dit"]), cfg.video.patch, layout=layout, source=source
    )
    return with_tower(params, tower)


def export_wan(params: Params, cfg: ModelConfig, layout: str) -> dict[str, np.ndarray]:
    """The video tower of `params` as a Wan state dict in `layout` ('diffusers' | 'original')."""
    tower = tower_arrays(params["dit"])
    spec = tower_spec(params["dit"])
    out = {}
    for ours, key, kind in _plan(spec, layout):
        keys = _expand(ours, key, spec)
        values = tower[ours] if ours.startswith(_LAYER) else [tower[ours]]
        for k, v in zip(keys, values):
            out[k] = np.array(_to_upstream(v, kind, cfg.video.patch), order="C")
    return out


# ---- checkpoints: `convert wan` and the training-time load


def abstract_dit(cfg: ModelConfig) -> Params:
    """Shapes and dtypes of params['dit'] for `cfg`, computed without allocating them."""
    pt, ph, pw = cfg.video.patch
    # one token of everything: no parameter shape depends on a length, and one token fits any
    # model.transcript.max_len and model.video.text_pad_to
    inputs = example_inputs(
        cfg,
        batch=1,
        video_frames=pt,
        height=ph,
        width=pw,
        audio_frames=1,
        audio_rate=1.0,
        text_len=1,
        transcript_len=1,
        abstract=True,
    )
    boxed = jax.eval_shape(HarmonyDiT(cfg).init, jax.random.key(0), *inputs)["params"]
    return nn.meta.unbox(boxed)


def _config_fields(cfg: ModelConfig, class_name: str) -> dict[str, tuple[Any, str]]:
    """{config.json field: (the value `cfg` implies, where that value comes from)} for a Wan
    transformer's config.json: diffusers' `WanTransformer3DModel` or the original `WanModel`."""
    v = cfg.video
    fixed = "this video tower (fixed)"
    if class_name == "WanTransformer3DModel":
        return {
            "num_layers": (cfg.depth, "model.depth"),
            "num_attention_heads": (v.heads, "model.video.heads"),
            "attention_head_dim": (v.head_dim, "model.video.dim / model.video.heads"),
            "ffn_dim": (v.ffn_dim, "model.video.ffn_dim"),
            "in_channels": (v.in_channels, "model.video.in_channels"),
            "out_channels": (v.in_channels, "model.video.in_channels"),
            "patch_size": (list(v.patch), "model.video.patch"),
            "text_dim": (cfg.text_dim, "model.text_dim"),
            "freq_dim": (cfg.freq_dim, "model.freq_dim"),
            "eps": (cfg.eps, "model.eps"),
            "cross_attn_norm": (True, fixed),
            "qk_norm": ("rms_norm_across_heads", fixed),
            "image_dim": (None, fixed),
            "added_kv_proj_dim": (None, fixed),
        }
    return {  # WanModel: text_len is the length it zero-pads the caption to and attends
        "num_layers": (cfg.depth, "model.depth"),
        "num_heads": (v.heads, "model.video.heads"),
        "dim": (v.dim, "model.video.dim"),
        "ffn_dim": (v.ffn_dim, "model.video.ffn_dim"),
        "in_dim": (v.in_channels, "model.video.in_channels"),
        "out_dim": (v.in_channels, "model.video.in_channels"),
        "patch_size": (list(v.patch), "model.video.patch"),
        "text_dim": (cfg.text_dim, "model.text_dim"),
        "freq_dim": (cfg.freq_dim, "model.freq_dim"),
        "eps": (cfg.eps, "model.eps"),
        "text_len": (v.text_pad_to, "model.video.text_pad_to"),
    }


def check_source_config(src: str, cfg: ModelConfig) -> None:
    """Refuses, in one line naming both values of each field, a model config that disagrees
    with the Wan transformer config.json beside the source's weights (`transformer/` of a
    pipeline, the folder itself, or a file's folder). Shapes alone cannot show a different eps
    or caption length; a source without a Wan config.json is checked by its shapes only."""
    path = pathlib.Path(src)
    folder = (
        path / "transformer"
        if (path / "transformer").is_dir()
        else path
        if path.is_dir()
        else path.parent
    )
    found = upstream.read_config(folder)
    name = (found or {}).get("_class_name")
    if name not in ("WanTransformer3DModel", "WanModel"):
        return
    wrong = []
    for field, (ours, where) in _config_fields(cfg, name).items():
        theirs = found.get(field, ours)
        if (list(theirs) if isinstance(theirs, (list, tuple)) else theirs) != ours:
            wrong.append(f"{field}={theirs!r} but --config has {where}={ours!r}")
    if wrong:
        raise ValueError(f"{folder / 'config.json'} ({name}): {'; '.join(wrong)}")


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert wan`: a Wan transformer checkpoint (diffusers or original
    layout, sharded or not) -> an orbax checkpoint of our video tower for `config.model`, which
    `config.init.video_from` then loads."""
    store.check_destination(dst, overwrite)  # refuse before the long part
    # The latent rate changes no parameter shape.
    cfg = ModelConfig.from_config(config.model, video_latent_rate=1.0)
    check_source_config(src, cfg)
    state = sd.read_safetensors(src, subfolder="transformer")
    tower = read_wan(state, tower_spec(abstract_dit(cfg)), cfg.video.patch, source=src)
    store.save_tree(traverse_util.unflatten_dict(tower, sep="/"), dst, overwrite=overwrite)
    logging.info(
        "wrote %d video-tower arrays (%d parameters) from %s to %s",
        len(tower),
        sum(v.size for v in tower.values()),
        src,
        dst,
    )


def load_video_tower(params: Params, path: str) -> Params:
    """`params` with the video tower of a `convert wan` checkpoint, each array placed with the
    sharding of the leaf it replaces; keys and shapes are checked against the model first."""
    spec = tower_spec(params["dit"])
    sd.check_keys(
        {k: v.shape for k, v in spec.items()},
        store.saved_shapes(path),
        f"video tower checkpoint {path}",
    )
    tower = store.restore_to_host(path, {k: v.dtype for k, v in spec.items()})
    logging.info("video tower loaded from %s", path)
    return with_tower(params, tower)
