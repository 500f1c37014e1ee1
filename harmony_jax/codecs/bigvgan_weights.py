"""BigVGAN generator checkpoints -> our `codecs.bigvgan.BigVGAN`: the `bigvgan` package's
`bigvgan_generator.pt` ({'generator': state dict} + `config.json`, e.g. nvidia/bigvgan_v2_*) and
MMAudio's 16 kHz `best_netG.pt`, and `load_bigvgan` (what the audio codec reads on first decode);
`convert/bigvgan.py` writes a converted checkpoint.

Weight norm is folded here, w = g * v / |v| (norm over all axes but 0, torch's `weight_norm`
default), from any of its three stored forms: `weight_g`/`weight_v` (torch.nn.utils.weight_norm),
`parametrizations.weight.original0/1` (the parametrize API MMAudio's copy uses) or a plain
`weight` (norm already removed). The anti-aliasing filters the checkpoint stores as buffers are
checked against ours (a different filter would be another architecture) and not kept.
Tensors: a Conv1d weight [O, I, k] is our kernel [k, I, O]; a ConvTranspose1d weight [I, O, k]
is our kernel [k, I, O].

A converted checkpoint is the tree {'params': ...}.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.bigvgan import (
    FILTER_SIZE,
    RATIO,
    BigVGAN,
    BigVGANConfig,
    kaiser_sinc_filter,
)
from harmony_jax.errors import ConfigError
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

FORMS = ("weight_g", "parametrizations", "plain")  # how the checkpoint stores weight-normed convs
_LIST = re.compile(r"^(ups|resblocks|convs1|convs2|convs|activations)_(\d+)$")
_FOLDED = {
    "weight_g": ("weight_g", "weight_v"),
    "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}


def torch_module(path: str) -> str:
    """'resblocks_3/convs1_0' -> 'resblocks.3.convs1.0'; 'ups_1' -> 'ups.1.0' (the package
    keeps each upsampler in a one-element ModuleList)."""
    parts = []
    for part in path.split("/"):
        listed = _LIST.match(part)
        if not listed:
            parts.append(part)
        else:
            parts += [listed[1], listed[2], *(["0"] if listed[1] == "ups" else [])]
    return ".".join(parts)


def bigvgan_spec(config: BigVGANConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """{our flat path: shape} of `BigVGAN(config)`, computed without allocating."""
    mel = jax.ShapeDtypeStruct((1, 1, config.num_mels), jnp.float32)
    return traverse_util.flatten_dict(
        jax.eval_shape(BigVGAN(config).init, jax.random.key(0), mel)["params"], sep="/"
    )


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not path.endswith("/kernel"):
        return shape
    k, i, o = shape
    return (i, o, k) if path.startswith("ups_") else (o, i, k)


def _to_ours(weight: np.ndarray, path: str) -> np.ndarray:
    return weight.transpose(2, 0, 1) if path.startswith("ups_") else weight.transpose(2, 1, 0)


def _filters(spec: Mapping[str, Any]) -> list[str]:
    """The filter buffers of every anti-aliased activation of the model (up and down use the
    same Kaiser-sinc taps)."""
    modules = [torch_module(p[: -len("/act/alpha")]) for p in spec if p.endswith("/act/alpha")]
    return [
        f"{m}.{buffer}"
        for m in modules
        for buffer in ("upsample.filter", "downsample.lowpass.filter")
    ]


def upstream_shapes(config: BigVGANConfig, form: str) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of the BigVGAN generator that fills `BigVGAN(config)`."""
    if form not in FORMS:
        raise ValueError(f"BigVGAN weight-norm form {form!r} is not one of {FORMS}")
    spec = bigvgan_spec(config)
    expected = {}
    for path, leaf in spec.items():
        module, name = path.rsplit("/", 1)
        key, shape = torch_module(module), _torch_shape(path, leaf.shape)
        if name == "kernel" and form != "plain":
            g, v = _FOLDED[form]
            expected[f"{key}.{g}"] = (shape[0], 1, 1)
            expected[f"{key}.{v}"] = shape
        else:
            expected[f"{key}.{'weight' if name == 'kernel' else name}"] = shape
    expected.update(dict.fromkeys(_filters(spec), (1, 1, FILTER_SIZE)))
    return expected


def detect_form(state: Mapping[str, Any], source: str) -> str:
    """How `state` stores its weight-normed convs (mixed forms are then named as mismatches)."""
    if any(k.endswith((".weight_g", ".weight_v")) for k in state):
        return "weight_g"
    if any(".parametrizations.weight.original" in k for k in state):
        return "parametrizations"
    if "conv_pre.weight" in state:
        return "plain"
    raise ValueError(
        f"{source} is not a BigVGAN generator (no weight_g / weight_v, "
        f"parametrizations.weight.original0 / 1 or conv_pre.weight keys); its first "
        f"keys: {sorted(state)[:8]}"
    )


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch's weight_norm(dim=0): g * v / |v|, the norm over every axis but the first."""
    v = np.asarray(v, np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (np.asarray(g, np.float64) * v / norm).astype(np.float32)


def read_bigvgan(
    state: Mapping[str, Any], config: BigVGANConfig, *, source: str = "state dict"
) -> dict[str, np.ndarray]:
    """Our flat float32 parameters from a BigVGAN generator state dict, weight norm folded; every
    missing, unexpected or mis-shaped key is named at once before any tensor is read."""
    form = detect_form(state, source)
    sd.check_keys(upstream_shapes(config, form), sd.shapes(state), f"{source} ({form} form)")
    spec = bigvgan_spec(config)
    taps = kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, FILTER_SIZE)
    wrong = [
        k
        for k in _filters(spec)
        if not np.allclose(np.asarray(state[k], np.float32).reshape(-1), taps, atol=1e-6)
    ]
    if wrong:
        raise ValueError(
            f"{source}: anti-aliasing filters differ from the Kaiser-sinc filter "
            f"(ratio {RATIO}, {FILTER_SIZE} taps) this model uses: {wrong}"
        )
    params = {}
    for path in spec:
        module, name = path.rsplit("/", 1)
        key = torch_module(module)
        if name != "kernel":
            params[path] = np.asarray(state[f"{key}.{name}"], np.float32)
            continue
        if form == "plain":
            weight = np.asarray(state[f"{key}.weight"], np.float32)
        else:
            g, v = _FOLDED[form]
            weight = fold_weight_norm(state[f"{key}.{g}"], state[f"{key}.{v}"])
        params[path] = np.ascontiguousarray(_to_ours(weight, path))
    return params


def config_from_hparams(h: Mapping[str, Any], source: str = "BigVGAN config") -> BigVGANConfig:
    """The `BigVGANConfig` of a BigVGAN `config.json` (its training fields are ignored)."""
    fields = {f.name for f in dataclasses.fields(BigVGANConfig)}
    missing = sorted(fields - {"use_tanh_at_final", "use_bias_at_final"} - h.keys())
    if missing:
        raise ValueError(f"{source} lacks the BigVGAN fields {missing}")
    return BigVGANConfig(
        num_mels=int(h["num_mels"]),
        upsample_rates=tuple(h["upsample_rates"]),
        upsample_kernel_sizes=tuple(h["upsample_kernel_sizes"]),
        upsample_initial_channel=int(h["upsample_initial_channel"]),
        resblock=str(h["resblock"]),
        resblock_kernel_sizes=tuple(h["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(tuple(d) for d in h["resblock_dilation_sizes"]),
        activation=str(h["activation"]),
        snake_logscale=bool(h["snake_logscale"]),
        use_tanh_at_final=bool(h.get("use_tanh_at_final", True)),
        use_bias_at_final=bool(h.get("use_bias_at_final", True)),
    )


def read_upstream(src: str | pathlib.Path) -> tuple[dict[str, Any], BigVGANConfig | None]:
    """(state dict, architecture) of a BigVGAN checkpoint: a folder with `bigvgan_generator.pt`
    (or one .pt / .safetensors), or the file itself; the architecture is that of the
    `config.json` beside it, None when there is none (MMAudio ships its 16 kHz one without)."""
    file = upstream.checkpoint_file(src, "BigVGAN", preferred="bigvgan_generator.pt")
    state = (
        sd.read_safetensors(file)
        if file.suffix == ".safetensors"
        else upstream.read_pth(file, entry="generator")
    )
    hparams = upstream.read_config(file.parent)
    return state, None if hparams is None else config_from_hparams(
        hparams, str(file.parent / "config.json")
    )


# ---- checkpoints


def load_bigvgan(path: str, config: BigVGANConfig) -> Any:
    """Nested float32 host params of `BigVGAN(config)` from anything `read_upstream` reads or a
    `convert bigvgan` checkpoint."""
    if not path:
        raise ConfigError(
            "config.codecs.audio.vocoder_path is empty: set it to a BigVGAN "
            "checkpoint (folder or .pt) or a `python -m harmony_jax.convert bigvgan` "
            "checkpoint"
        )
    if store.is_orbax_checkpoint(path):
        expected = {f"params/{k}": v.shape for k, v in bigvgan_spec(config).items()}
        sd.check_keys(expected, store.saved_shapes(path), f"BigVGAN checkpoint {path}")
        flat = store.restore_to_host(path, dict.fromkeys(expected, np.float32))
        params = {k[len("params/") :]: v for k, v in flat.items()}
    else:
        state, found = read_upstream(path)
        if found is not None and found != config:
            raise ValueError(
                f"{path}: its config.json describes another BigVGAN than the codec's"
                f" ({found}, expected {config})"
            )
        params = read_bigvgan(state, config, source=path)
    logging.info("BigVGAN loaded from %s", path)
    return traverse_util.unflatten_dict(params, sep="/")
