"""MMAudio VAE checkpoints (`ext_weights/v1-16.pth`, `v1-44.pth`: the state dict of
`mmaudio.ext.autoencoder.vae.VAE`) -> our `codecs.mmaudio_vae.MMAudioVAE`, and `load_vae` (what
the audio codec reads on first use); `convert/mmaudio_vae.py` writes a converted checkpoint.

MMAudio names: 'encoder.down.0.block.1.conv1.weight' is our 'encoder/down_0/block_1/conv1/kernel'
(the middle's 'mid.block_1' / 'mid.attn_1' keep their names). Every MPConv1D weight [O, I, k] is
normalised as MMAudio's `remove_weight_norm()` does (`fold_mp_weight`) and becomes our kernel
[k, I, O]; 'learnable_gain' scalars are kept. The buffers 'data_mean' / 'data_std' [1, n_mels, 1]
(the mel normalisation) become the checkpoint's leaves 'data_mean' / 'data_std' [n_mels].

A converted checkpoint is the tree {'params': ..., 'data_mean': [n_mels], 'data_std': [n_mels]}.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.mmaudio_vae import MMAudioVAE, VAEConfig, fold_mp_weight
from harmony_jax.errors import ConfigError
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

STATS = ("data_mean", "data_std")
_LIST = re.compile(r"^(down|up|block)_(\d+)$")


def torch_key(path: str) -> str:
    """'encoder/down_0/block_1/conv1/kernel' -> 'encoder.down.0.block.1.conv1.weight'."""
    *modules, leaf = path.split("/")
    parts = []
    for parent, part in zip(["", *modules], modules):
        listed = _LIST.match(part) if parent != "mid" else None
        parts += [listed[1], listed[2]] if listed else [part]
    return ".".join([*parts, "weight" if leaf == "kernel" else leaf])


def vae_spec(config: VAEConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """{our flat path: shape} of `MMAudioVAE(config)`, computed without allocating."""
    mel = jax.ShapeDtypeStruct((1, config.downsample, config.n_mels), jnp.float32)
    params = jax.eval_shape(MMAudioVAE(config).init, jax.random.key(0), mel)["params"]
    return traverse_util.flatten_dict(params, sep="/")


def upstream_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: shape} of the MMAudio VAE state dict that fills `MMAudioVAE(config)`."""
    expected = {
        torch_key(p): (v.shape[::-1] if p.endswith("/kernel") else v.shape)
        for p, v in vae_spec(config).items()
    }
    expected.update(dict.fromkeys(STATS, (1, config.n_mels, 1)))
    return expected


def read_vae(
    state: Mapping[str, Any], config: VAEConfig, *, source: str = "state dict"
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(our flat float32 parameters with MP weights normalised, data_mean [n_mels], data_std
    [n_mels]) from an MMAudio VAE state dict; every missing, unexpected or mis-shaped key is
    named at once before any tensor is read."""
    sd.check_keys(upstream_shapes(config), sd.shapes(state), source)
    params = {}
    for path in vae_spec(config):
        x = np.asarray(state[torch_key(path)], np.float32)
        params[path] = (
            np.ascontiguousarray(fold_mp_weight(x).transpose(2, 1, 0))
            if path.endswith("/kernel")
            else x
        )
    mean, std = (np.asarray(state[k], np.float32).reshape(-1) for k in STATS)
    return params, mean, std


def config_from_state(state: Mapping[str, Any], source: str) -> VAEConfig:
    """The VAEConfig a state dict was made for, read off its shapes (MMAudio ships no config:
    16 kHz is (80 bands, 20 latents, width 384), 44.1 kHz (128, 40, 512))."""
    keys = ("data_mean", "encoder.conv_in.weight", "decoder.conv_in.weight")
    if any(k not in state for k in keys):
        raise ValueError(
            f"{source} is not an MMAudio VAE state dict: it lacks "
            f"{[k for k in keys if k not in state]}"
        )
    return VAEConfig(
        n_mels=state["data_mean"].shape[1],
        hidden_dim=state["encoder.conv_in.weight"].shape[0],
        embed_dim=state["decoder.conv_in.weight"].shape[1],
    )


def read_upstream(src: str | pathlib.Path) -> dict[str, Any]:
    """The state dict of an MMAudio VAE checkpoint: a .pth / .pt file or a .safetensors file."""
    src = pathlib.Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such MMAudio VAE checkpoint file (e.g. v1-16.pth)")
    return sd.read_safetensors(src) if src.suffix == ".safetensors" else upstream.read_pth(src)


# ---- checkpoints


def load_vae(path: str, config: VAEConfig) -> tuple[Any, np.ndarray, np.ndarray]:
    """(nested params, data_mean [n_mels], data_std [n_mels]) as float32 host arrays for
    `MMAudioVAE(config)`, from an MMAudio checkpoint or a `convert mmaudio-vae` one."""
    if not path:
        raise ConfigError(
            "config.codecs.audio.path is empty: set it to MMAudio's VAE checkpoint "
            "(ext_weights/v1-16.pth or v1-44.pth) or a `python -m harmony_jax.convert"
            " mmaudio-vae` checkpoint"
        )
    if store.is_orbax_checkpoint(path):
        expected = {f"params/{k}": v.shape for k, v in vae_spec(config).items()}
        expected.update(dict.fromkeys(STATS, (config.n_mels,)))
        sd.check_keys(expected, store.saved_shapes(path), f"MMAudio VAE checkpoint {path}")
        flat = store.restore_to_host(path, dict.fromkeys(expected, np.float32))
        params = {k[len("params/") :]: v for k, v in flat.items() if k.startswith("params/")}
        mean, std = flat["data_mean"], flat["data_std"]
    else:
        params, mean, std = read_vae(read_upstream(path), config, source=path)
    logging.info("MMAudio VAE loaded from %s", path)
    return traverse_util.unflatten_dict(params, sep="/"), mean, std
