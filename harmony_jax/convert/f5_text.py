"""F5-TTS checkpoints -> the character part of our `model.transcript.TranscriptEncoder` (F5's
`TextEmbedding`: embedding, ConvNeXt-V2 blocks; our final `proj` is not F5's and stays as
initialised); `python -m harmony_jax.convert f5-text`, `load_transcript` (puts a converted one into
a model's params) and `load_vocab`.

Sources: an F5-TTS release folder (`model_*.safetensors` or `model_*.pt` beside `vocab.txt`) or
the checkpoint file itself (its `vocab.txt` beside it). Keys: the EMA weights
'ema_model.transformer.text_embed.*' (what F5's inference loads), else the trained ones
'transformer.text_embed.*'; a .pt holds them under 'ema_model_state_dict' / 'model_state_dict'.
Every other key of the TTS model is ignored. Tensors: the depthwise Conv1d weight [D, 1, 7] is
our kernel [7, 1, D], a Linear weight [out, in] our kernel [in, out].

A converted checkpoint is the tree {'params': {'char_embed': ..., 'convnext_0': ...},
'vocab': uint8 bytes of vocab.txt}.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import linen as nn
from flax import traverse_util

from harmony_jax.codecs.text import parse_vocab, read_vocab
from harmony_jax.model.config import TranscriptConfig
from harmony_jax.model.transcript import TranscriptEncoder
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

PREFIXES = ("ema_model.transformer.text_embed.", "transformer.text_embed.")
VOCAB_FILE = "vocab.txt"
_PTH_ENTRIES = ("ema_model_state_dict", "model_state_dict")
_PROJ = "proj/"


def _rules(config: TranscriptConfig) -> list[tuple[str, str, str]]:
    """[(our path, F5 key under text_embed., kind)]."""
    rules = [("char_embed/embedding", "text_embed.weight", "copy")]
    for i in range(config.conv_layers):
        ours, f5 = f"convnext_{i}/", f"text_blocks.{i}."
        rules += [
            (ours + "dwconv/kernel", f5 + "dwconv.weight", "depthwise"),
            (ours + "dwconv/bias", f5 + "dwconv.bias", "copy"),
            (ours + "norm/ln/scale", f5 + "norm.weight", "copy"),
            (ours + "norm/ln/bias", f5 + "norm.bias", "copy"),
            (ours + "grn/gamma", f5 + "grn.gamma", "copy"),
            (ours + "grn/beta", f5 + "grn.beta", "copy"),
        ]
        for name in ("pwconv1", "pwconv2"):
            rules += [
                (ours + f"{name}/kernel", f5 + f"{name}.weight", "linear"),
                (ours + f"{name}/bias", f5 + f"{name}.bias", "copy"),
            ]
    return rules


def text_spec(config: TranscriptConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """{our flat path: shape} of the F5 part of `TranscriptEncoder(config, ...)` (no `proj`)."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    params = nn.meta.unbox(
        jax.eval_shape(TranscriptEncoder(config, 1).init, jax.random.key(0), ids)["params"]
    )
    flat = traverse_util.flatten_dict(params, sep="/")
    spec = {k: v for k, v in flat.items() if not k.startswith(_PROJ)}
    ruled = {r[0] for r in _rules(config)}
    if ruled != spec.keys():
        raise ValueError(
            f"the transcript encoder and its F5-TTS mapping differ: {sorted(ruled ^ spec.keys())}"
        )
    return spec


def _f5_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    return shape[::-1] if kind in ("depthwise", "linear") else shape


def upstream_shapes(config: TranscriptConfig) -> dict[str, tuple[int, ...]]:
    """{F5 key under 'text_embed.': shape} of the `TextEmbedding` that fills `config`."""
    spec = text_spec(config)
    return {key: _f5_shape(spec[ours].shape, kind) for ours, key, kind in _rules(config)}


def text_embed_state(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The `TextEmbedding` keys of a whole F5-TTS state dict, their prefix stripped (the EMA
    weights when both are there)."""
    for prefix in PREFIXES:
        if prefix + "text_embed.weight" in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise ValueError(
        f"{source} holds no F5-TTS text embedding (no "
        f"{' or '.join(p + 'text_embed.weight' for p in PREFIXES)}); its first keys: "
        f"{sorted(state)[:8]}"
    )


def read_f5_text(
    state: Mapping[str, Any], config: TranscriptConfig, *, source: str = "state dict"
) -> dict[str, np.ndarray]:
    """Our flat float32 transcript parameters (all but `proj`) from an F5-TTS state dict; every
    missing, unexpected or mis-shaped text-embedding key is named at once before any is read."""
    sub = text_embed_state(state, source)
    sd.check_keys(upstream_shapes(config), sd.shapes(sub), f"{source} (F5-TTS text_embed)")
    params = {}
    for ours, key, kind in _rules(config):
        x = np.asarray(sub[key], np.float32)
        params[ours] = np.ascontiguousarray(
            x.T if kind == "linear" else x.transpose(2, 1, 0) if kind == "depthwise" else x
        )
    return params


def read_upstream(src: str | pathlib.Path) -> tuple[dict[str, Any], pathlib.Path]:
    """(state dict, vocab.txt path) of an F5-TTS checkpoint folder or file."""
    file = upstream.checkpoint_file(src, "F5-TTS")
    vocab = file.parent / VOCAB_FILE
    if not vocab.is_file():
        raise FileNotFoundError(f"{file}: no {VOCAB_FILE} beside it (F5-TTS ships one per model)")
    if file.suffix == ".safetensors":
        return sd.read_safetensors(file), vocab
    import torch

    entries = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    entry = next((e for e in _PTH_ENTRIES if e in entries), None)
    if entry is None:
        raise ValueError(f"{file} has none of {_PTH_ENTRIES}; its keys: {sorted(entries)[:8]}")
    return upstream.read_pth(file, entry=entry), vocab


def check_vocab(vocab: Mapping[str, int], config: TranscriptConfig, source: str) -> None:
    """The embedding has one row per vocabulary entry plus the padding row 0."""
    if len(vocab) + 1 != config.vocab_size:
        raise ValueError(
            f"{source} lists {len(vocab)} tokens, so the transcript embedding has "
            f"{len(vocab) + 1} rows; config.model.transcript.vocab_size is "
            f"{config.vocab_size}"
        )


# ---- checkpoints


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert f5-text`: F5-TTS's text embedding and vocab.txt -> an
    orbax checkpoint for `config.model.transcript` (dim, conv_layers, conv_mult, vocab_size must
    be F5's: 512, 4, 2, 2546 for F5TTS_v1_Base)."""
    store.check_destination(dst, overwrite)
    cfg = TranscriptConfig(**{k: int(v) for k, v in config.model.transcript.items()})
    state, vocab_file = read_upstream(src)
    check_vocab(read_vocab(vocab_file), cfg, str(vocab_file))
    params = read_f5_text(state, cfg, source=src)
    tree = {
        "params": traverse_util.unflatten_dict(params, sep="/"),
        "vocab": np.frombuffer(vocab_file.read_bytes(), np.uint8),
    }
    store.save_tree(tree, dst, overwrite=overwrite)
    logging.info(
        "wrote %d F5-TTS text-embedding arrays (%d parameters) and %s from %s to %s",
        len(params),
        sum(v.size for v in params.values()),
        VOCAB_FILE,
        src,
        dst,
    )


def load_transcript(params: Any, path: str) -> Any:
    """`params` (a System's {'dit': ...}) with the transcript encoder's F5 part replaced by a
    `convert f5-text` checkpoint's, each array placed with the sharding of the leaf it replaces;
    keys and shapes are checked against the model first. `proj` is kept."""
    flat = traverse_util.flatten_dict(params["dit"]["transcript"], sep="/")
    wanted = {k: v for k, v in flat.items() if not k.startswith(_PROJ)}
    sd.check_keys(
        {f"params/{k}": v.shape for k, v in wanted.items()},
        {k: s for k, s in store.saved_shapes(path).items() if k != "vocab"},
        f"F5-TTS text checkpoint {path}",
    )
    loaded = store.restore_to_host(
        path, {"vocab": np.uint8, **{f"params/{k}": v.dtype for k, v in wanted.items()}}
    )
    for k, old in wanted.items():
        new = np.asarray(loaded[f"params/{k}"], old.dtype)
        flat[k] = jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new
    logging.info("transcript encoder loaded from %s", path)
    dit = {**params["dit"], "transcript": traverse_util.unflatten_dict(flat, sep="/")}
    return {**params, "dit": dit}


def load_vocab(path: str) -> dict[str, int]:
    """The vocabulary of a `convert f5-text` checkpoint, or of an F5-TTS folder / file."""
    root = pathlib.Path(path)
    if store.is_orbax_checkpoint(root):
        args = {"vocab": ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.uint8)}
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree = checkpointer.restore(
                epath.Path(path),
                args=ocp.args.PyTreeRestore(
                    item={"vocab": np.zeros((), np.uint8)}, restore_args=args, partial_restore=True
                ),
            )
        return parse_vocab(np.asarray(tree["vocab"]).tobytes().decode("utf-8"), f"{path} (vocab)")
    base = root if root.is_dir() else root.parent
    return read_vocab(base / VOCAB_FILE)
