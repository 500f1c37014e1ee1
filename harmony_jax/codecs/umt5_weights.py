"""umT5 encoder checkpoints <-> our `codecs.umt5.UMT5Encoder`: import from the transformers
`UMT5EncoderModel` layout or the original Wan layout (`models_t5_umt5-xxl-enc-bf16.pth`, Wan's
`t5.py` naming), export back to either (round trips, tests), and what the text encoder reads
on first use (`load_umt5`, `load_spiece`); `convert/umt5.py` writes a converted checkpoint.

Our tree: 'embedding' [V, D], 'final_norm/scale' [D], and per layer, stacked on axis 0 (scanned),
'layers/{attn_norm/scale, q, k, v, o, relative_attention_bias, ffn_norm/scale, wi_0, wi_1, wo}'.
A torch Linear weight [out, in] is our Dense kernel [in, out]. A converted checkpoint is the tree
{'params': ..., 'spiece_model': uint8 bytes of the sentencepiece model, 'architecture': its
transformers config fields as JSON bytes}, so one path gives both, and loading it into an encoder
of another eps or max_distance (which change no shape) is refused.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from harmony_jax.codecs.umt5 import UMT5Config, UMT5Encoder
from harmony_jax.errors import ConfigError
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

LAYOUTS = ("transformers", "original")
_LAYER = "layers/"
_TIED = "encoder.embed_tokens.weight"  # transformers' tied copy of shared.weight
ARCHITECTURE_LEAF = "architecture"  # leaf of a converted checkpoint: `_architecture` as JSON bytes


def _linear(ours: str, transformers: str, original: str) -> tuple[str, str, str, str]:
    return (f"{ours}/kernel", f"{transformers}.weight", f"{original}.weight", "linear")


# (our path, transformers key, original Wan key, kind); per-layer keys hold '{i}'.
_RULES = (
    ("embedding", "shared.weight", "token_embedding.weight", "copy"),
    ("final_norm/scale", "encoder.final_layer_norm.weight", "norm.weight", "copy"),
    (
        _LAYER + "attn_norm/scale",
        "encoder.block.{i}.layer.0.layer_norm.weight",
        "blocks.{i}.norm1.weight",
        "copy",
    ),
    *(
        _linear(
            _LAYER + n, f"encoder.block.{{i}}.layer.0.SelfAttention.{n}", f"blocks.{{i}}.attn.{n}"
        )
        for n in ("q", "k", "v", "o")
    ),
    (
        _LAYER + "relative_attention_bias",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
        "blocks.{i}.pos_embedding.embedding.weight",
        "copy",
    ),
    (
        _LAYER + "ffn_norm/scale",
        "encoder.block.{i}.layer.1.layer_norm.weight",
        "blocks.{i}.norm2.weight",
        "copy",
    ),
    # Wan's gated FFN: fc2(fc1(x) * gelu(gate(x))), so gate is wi_0 (the GELU branch)
    _linear(
        _LAYER + "wi_0", "encoder.block.{i}.layer.1.DenseReluDense.wi_0", "blocks.{i}.ffn.gate.0"
    ),
    _linear(_LAYER + "wi_1", "encoder.block.{i}.layer.1.DenseReluDense.wi_1", "blocks.{i}.ffn.fc1"),
    _linear(_LAYER + "wo", "encoder.block.{i}.layer.1.DenseReluDense.wo", "blocks.{i}.ffn.fc2"),
)


def umt5_spec(config: UMT5Config) -> dict[str, jax.ShapeDtypeStruct]:
    """{our flat path: shape} of `UMT5Encoder(config)`, computed without allocating."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    params = jax.eval_shape(UMT5Encoder(config).init, jax.random.key(0), ids)["params"]
    return traverse_util.flatten_dict(params, sep="/")


def _plan(spec: Mapping[str, jax.ShapeDtypeStruct], layout: str):
    """[(our path, [upstream keys, one per layer for per-layer leaves], kind)]."""
    if layout not in LAYOUTS:
        raise ValueError(f"umT5 layout {layout!r} is not one of {LAYOUTS}")
    col = LAYOUTS.index(layout) + 1
    rules = {r[0]: (r[col], r[3]) for r in _RULES}
    if rules.keys() != spec.keys():
        raise ValueError(
            f"the umT5 module and its mapping differ: {sorted(rules.keys() ^ spec.keys())}"
        )
    plan = []
    for ours, (key, kind) in sorted(rules.items()):
        layers = spec[ours].shape[0] if ours.startswith(_LAYER) else 0
        plan.append((ours, [key.format(i=i) for i in range(layers)] if layers else [key], kind))
    return plan


def upstream_shapes(config: UMT5Config, layout: str) -> dict[str, tuple[int, ...]]:
    """{upstream key: shape} of the umT5 checkpoint that fills `UMT5Encoder(config)`."""
    spec = umt5_spec(config)
    expected = {}
    for ours, keys, kind in _plan(spec, layout):
        shape = spec[ours].shape[1:] if ours.startswith(_LAYER) else spec[ours].shape
        expected.update({k: shape[::-1] if kind == "linear" else shape for k in keys})
    return expected


def detect_layout(state: Mapping[str, Any], source: str) -> str:
    """'transformers' (has encoder.final_layer_norm.weight) or 'original' (has norm.weight)."""
    if "encoder.final_layer_norm.weight" in state:
        return "transformers"
    if "norm.weight" in state:
        return "original"
    raise ValueError(
        f"{source} is neither a transformers UMT5EncoderModel (no "
        f"encoder.final_layer_norm.weight) nor Wan's original umT5 encoder (no "
        f"norm.weight); its first keys: {sorted(state)[:8]}"
    )


def read_umt5(
    state: Mapping[str, Any],
    config: UMT5Config,
    *,
    layout: str = "auto",
    dtype: Any = None,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Our flat parameters (layers stacked; the checkpoint's dtype unless `dtype`) from a umT5
    encoder state dict; every missing, unexpected or mis-shaped key is named at once first.
    transformers' tied `encoder.embed_tokens.weight` stands in for `shared.weight` if alone."""
    layout = detect_layout(state, source) if layout == "auto" else layout
    state = dict(state)
    if layout == "transformers" and _TIED in state:
        tied = state.pop(_TIED)
        state.setdefault("shared.weight", tied)
    sd.check_keys(upstream_shapes(config, layout), sd.shapes(state), f"{source} ({layout} layout)")
    params = {}
    for ours, keys, kind in _plan(umt5_spec(config), layout):
        arrays = [np.asarray(state[k]) for k in keys]
        arrays = [a.T if kind == "linear" else a for a in arrays]
        value = np.stack(arrays) if ours.startswith(_LAYER) else arrays[0]
        params[ours] = value if dtype is None else value.astype(dtype)
    return params


def export_umt5(
    params: Mapping[str, np.ndarray], config: UMT5Config, layout: str
) -> dict[str, np.ndarray]:
    """Our flat parameters as a umT5 state dict in `layout` ('transformers' | 'original')."""
    out = {}
    for ours, keys, kind in _plan(umt5_spec(config), layout):
        values = params[ours] if ours.startswith(_LAYER) else [params[ours]]
        for k, v in zip(keys, values):
            out[k] = np.ascontiguousarray(v.T if kind == "linear" else v)
    return out


def architecture_of(config: UMT5Config) -> dict[str, Any]:
    """`config` as the fields of a transformers UMT5Config config.json."""
    return dict(
        model_type="umt5",
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        relative_attention_num_buckets=config.num_buckets,
        relative_attention_max_distance=config.max_distance,
        layer_norm_epsilon=config.eps,
        feed_forward_proj="gated-gelu",
    )


def config_from_transformers(fields: Mapping[str, Any]) -> UMT5Config:
    return UMT5Config(
        vocab_size=fields["vocab_size"],
        d_model=fields["d_model"],
        d_kv=fields["d_kv"],
        num_heads=fields["num_heads"],
        d_ff=fields["d_ff"],
        num_layers=fields["num_layers"],
        num_buckets=fields["relative_attention_num_buckets"],
        max_distance=fields["relative_attention_max_distance"],
        eps=fields["layer_norm_epsilon"],
    )


def read_upstream(src: str | pathlib.Path, config: UMT5Config | None = None):
    """(state dict, config) of a transformers folder (or a diffusers pipeline root with
    `text_encoder/`) or an original `.pth`. The architecture is the folder's config.json
    (checked against `config` when given), else `config` or umT5-XXL's."""
    src = pathlib.Path(src)
    if src.suffix in upstream.PTH_SUFFIXES:
        return upstream.read_pth(src), config or UMT5Config()
    state = sd.read_safetensors(src, subfolder="text_encoder")
    folder = (
        src / "text_encoder"
        if (src / "text_encoder").is_dir()
        else src
        if src.is_dir()
        else src.parent
    )
    fields = upstream.read_config(folder)
    if fields is None:
        return state, config or UMT5Config()
    if config is None:
        upstream.check_config(
            fields,
            {"model_type": "umt5", "feed_forward_proj": "gated-gelu"},
            f"{folder}/config.json",
        )
        return state, config_from_transformers(fields)
    upstream.check_config(fields, architecture_of(config), f"{folder}/config.json")
    return state, config


def find_spiece(src: str | pathlib.Path) -> pathlib.Path:
    """The sentencepiece model of an upstream checkpoint: in its folder, its `tokenizer/`, the
    pipeline's `tokenizer/` beside `text_encoder/`, or Wan's `google/umt5-xxl/`."""
    src = pathlib.Path(src)
    base = src if src.is_dir() else src.parent
    candidates = [
        base / "spiece.model",
        base / "tokenizer" / "spiece.model",
        base.parent / "tokenizer" / "spiece.model",
        base / "google" / "umt5-xxl" / "spiece.model",
    ]
    for file in candidates:
        if file.is_file():
            return file
    raise FileNotFoundError(
        f"no sentencepiece model for {src}; looked for {[str(c) for c in candidates]}"
    )


# ---- checkpoints


def _restore(path: str, dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The leaves `dtypes` names ('a/b' paths) of an orbax tree, as host arrays; others unread."""
    args = {k: ocp.RestoreArgs(restore_type=np.ndarray, dtype=d) for k, d in dtypes.items()}
    items = {k: np.zeros((), d) for k, d in dtypes.items()}
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(
            epath.Path(path),
            args=ocp.args.PyTreeRestore(
                item=traverse_util.unflatten_dict(items, sep="/"),
                restore_args=traverse_util.unflatten_dict(args, sep="/"),
                partial_restore=True,
            ),
        )
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _saved(path: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{'a/b': (shape, dtype)} of an orbax tree, from its metadata."""
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(epath.Path(path)).item_metadata.tree
    return {
        k: (tuple(v.shape), v.dtype) for k, v in traverse_util.flatten_dict(tree, sep="/").items()
    }


def _check_recorded(path: str, saved: Mapping[str, Any], config: UMT5Config) -> None:
    """Refuses a `convert umt5` checkpoint whose recorded architecture differs from `config`
    (eps and max_distance change no shape), naming both values of each field."""
    if ARCHITECTURE_LEAF not in saved:
        logging.warning(
            "umT5 checkpoint %s records no architecture (converted by an older "
            "version): its eps and max_distance cannot be checked; convert it again",
            path,
        )
        return
    recorded = json.loads(
        _restore(path, {ARCHITECTURE_LEAF: np.uint8})[ARCHITECTURE_LEAF].tobytes()
    )
    wrong = [
        f"{k}={recorded.get(k)!r} but the text encoder has {v!r}"
        for k, v in architecture_of(config).items()
        if recorded.get(k) != v
    ]
    if wrong:
        raise ValueError(
            f"umT5 checkpoint {path} was converted from another architecture: {'; '.join(wrong)}"
        )


def load_umt5(path: str, config: UMT5Config) -> Any:
    """Nested host params of `UMT5Encoder(config)` in the checkpoint's dtype, from anything
    `read_upstream` reads or a `convert umt5` checkpoint."""
    if not path:
        raise ConfigError(
            "config.codecs.text.path is empty: set it to a umT5 checkpoint folder "
            "(e.g. Wan2.2-TI2V-5B-Diffusers) or a `python -m harmony_jax.convert "
            "umt5` checkpoint"
        )
    if store.is_orbax_checkpoint(path):
        saved = _saved(path)
        expected = {f"params/{k}": v.shape for k, v in umt5_spec(config).items()}
        sd.check_keys(
            expected,
            {k: s for k, (s, _) in saved.items() if k not in ("spiece_model", ARCHITECTURE_LEAF)},
            f"umT5 checkpoint {path}",
        )
        _check_recorded(path, saved, config)
        flat = _restore(path, {k: saved[k][1] for k in expected})
        params = {k[len("params/") :]: v for k, v in flat.items()}
    else:
        state, _ = read_upstream(path, config)
        params = read_umt5(state, config, source=path)
    logging.info("umT5 encoder loaded from %s", path)
    return traverse_util.unflatten_dict(params, sep="/")


def load_spiece(path: str) -> bytes:
    """The serialized sentencepiece model of a checkpoint (`find_spiece`, or the orbax leaf)."""
    if not path:
        raise ConfigError("config.codecs.text.path is empty: the umT5 tokenizer is read from it")
    if store.is_orbax_checkpoint(path):
        return _restore(path, {"spiece_model": np.uint8})["spiece_model"].tobytes()
    return find_spiece(path).read_bytes()
