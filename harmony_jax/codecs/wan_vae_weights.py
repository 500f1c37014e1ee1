"""The Wan2.2 VAE <-> our `codecs.wan_vae.WanVAE`: import from the diffusers `AutoencoderKLWan`
layout or the original `Wan2.2_VAE.pth` layout, export back to either (round trips, tests),
and `load_vae` (what the codec reads on first use); `convert/wan_vae.py` writes a converted one.

Our parameter paths are diffusers' module paths ('down_blocks_0' is 'down_blocks.0'; the 2D conv
'resample' is 'resample.1' of upstream's nn.Sequential; kernel/scale are weight/gamma). The
original layout renames diffusers' modules the way diffusers' `scripts/convert_wan_to_diffusers.py`
(`convert_vae_22`) does, read the other way. Tensors: a torch Conv3d weight [O, I, kt, kh, kw] is
our kernel [kt, kh, kw, I, O], a Conv2d [O, I, kh, kw] is [kh, kw, I, O]; an RMS-norm gamma
[C, 1, 1(, 1)] is our scale [C].

A converted checkpoint is the tree {'params': ..., 'latents_mean': [z], 'latents_std': [z]}.
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

from harmony_jax.codecs.wan_vae import WanVAE, WanVAEConfig
from harmony_jax.errors import ConfigError
from harmony_jax.weights import state_dict as sd
from harmony_jax.weights import store, upstream

LAYOUTS = ("diffusers", "original")

# Wan2.2's latent statistics (Wan2.2 `vae2_2.py`; diffusers' Wan2.2-TI2V-5B vae/config.json), for
# an original-layout checkpoint, which has no config.json.
WAN22_LATENTS_MEAN = (
    -0.2289,
    -0.0052,
    -0.1323,
    -0.2339,
    -0.2799,
    0.0174,
    0.1838,
    0.1557,
    -0.1382,
    0.0542,
    0.2813,
    0.0891,
    0.1570,
    -0.0098,
    0.0375,
    -0.1825,
    -0.2246,
    -0.1207,
    -0.0698,
    0.5109,
    0.2665,
    -0.2108,
    -0.2158,
    0.2502,
    -0.2055,
    -0.0322,
    0.1109,
    0.1567,
    -0.0729,
    0.0899,
    -0.2799,
    -0.1230,
    -0.0313,
    -0.1649,
    0.0117,
    0.0723,
    -0.2839,
    -0.2083,
    -0.0520,
    0.3748,
    0.0152,
    0.1957,
    0.1433,
    -0.2944,
    0.3573,
    -0.0548,
    -0.1681,
    -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765,
    1.0364,
    0.4514,
    1.1677,
    0.5313,
    0.4990,
    0.4818,
    0.5013,
    0.8158,
    1.0344,
    0.5894,
    1.0901,
    0.6885,
    0.6165,
    0.8454,
    0.4978,
    0.5759,
    0.3523,
    0.7135,
    0.6804,
    0.5833,
    1.4146,
    0.8986,
    0.5659,
    0.7069,
    0.5338,
    0.4889,
    0.4917,
    0.4069,
    0.4999,
    0.6866,
    0.4093,
    0.5709,
    0.6065,
    0.6415,
    0.4944,
    0.5726,
    1.2042,
    0.5458,
    1.6887,
    0.3971,
    1.0600,
    0.3943,
    0.5537,
    0.5444,
    0.4089,
    0.7468,
    0.7744,
)

_INDEXED = re.compile(r"^(.+)_(\d+)$")
_LEAF = {"kernel": "weight", "bias": "bias", "scale": "gamma"}
# Inside a residual block: diffusers name -> the original nn.Sequential index.
_RESNET = (
    (".norm1.", ".residual.0."),
    (".conv1.", ".residual.2."),
    (".norm2.", ".residual.3."),
    (".conv2.", ".residual.6."),
    (".conv_shortcut.", ".shortcut."),
)
# (diffusers pattern, original replacement); {down} / {up} stand for the index of the resampler
# in the original Down/Up_ResidualBlock's nn.Sequential, after its residual blocks.
_MODULES = (
    (r"^quant_conv\.", "conv1."),
    (r"^post_quant_conv\.", "conv2."),
    (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.middle.0."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.middle.2."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
    (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsampler\.", r"encoder.downsamples.\1.downsamples.{down}."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2."),
    (r"^decoder\.up_blocks\.(\d+)\.upsampler\.", r"decoder.upsamples.\1.upsamples.{up}."),
)


def diffusers_key(path: str) -> str:
    """'encoder/down_blocks_0/downsampler/resample/kernel' ->
    'encoder.down_blocks.0.downsampler.resample.1.weight'."""
    *modules, leaf = path.split("/")
    parts = []
    for m in modules:
        indexed = _INDEXED.match(m)
        parts += [indexed[1], indexed[2]] if indexed else [m]
        if m == "resample":
            parts.append("1")
    return ".".join([*parts, _LEAF[leaf]])


def original_key(key: str, config: WanVAEConfig) -> str:
    """A diffusers key in the original Wan2.2 VAE's naming."""
    if ".resnets." in key:
        for d, o in _RESNET:
            key = key.replace(d, o)
    for pattern, repl in _MODULES:
        key, hit = re.subn(pattern, repl, key)
        if hit:
            return key.format(down=config.num_res_blocks, up=config.num_res_blocks + 1)
    return key


def upstream_key(path: str, config: WanVAEConfig, layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"Wan VAE layout {layout!r} is not one of {LAYOUTS}")
    key = diffusers_key(path)
    return key if layout == "diffusers" else original_key(key, config)


# ---- tensors


def _upstream_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if path.endswith("/kernel"):  # [..spatial.., I, O] -> [O, I, ..spatial..]
        return (shape[-1], shape[-2], *shape[:-2])
    if path.endswith("/scale"):  # the attention norm is a 2D (image) norm
        return (shape[0], 1, 1) if "/attentions_" in path else (shape[0], 1, 1, 1)
    return shape


def _to_ours(x: np.ndarray, path: str) -> np.ndarray:
    if path.endswith("/kernel"):
        return x.transpose(*range(2, x.ndim), 1, 0)
    if path.endswith("/scale"):
        return x.reshape(-1)
    return x


def _to_upstream(x: np.ndarray, path: str) -> np.ndarray:
    if path.endswith("/kernel"):
        return x.transpose(x.ndim - 1, x.ndim - 2, *range(x.ndim - 2))
    return x.reshape(_upstream_shape(path, x.shape))


# ---- state dicts


def vae_spec(config: WanVAEConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """{our flat path: shape} of `WanVAE(config)`'s parameters, computed without allocating."""
    side = 2 ** (len(config.dim_mult) - 1)  # the smallest clip every level can halve
    x = jax.ShapeDtypeStruct(
        (1, config.temporal_stride, side, side, config.in_channels), jnp.float32
    )
    variables = jax.eval_shape(WanVAE(config).init, jax.random.key(0), x)
    return traverse_util.flatten_dict(variables["params"], sep="/")


def upstream_shapes(config: WanVAEConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """{upstream key: shape} of the Wan VAE checkpoint that fills `WanVAE(config)`."""
    return {
        upstream_key(p, config, layout): _upstream_shape(p, s.shape)
        for p, s in vae_spec(config).items()
    }


def detect_layout(state: Mapping[str, Any], source: str) -> str:
    """'diffusers' (has quant_conv.weight) or 'original' (has conv1.weight)."""
    if "quant_conv.weight" in state:
        return "diffusers"
    if "conv1.weight" in state:
        return "original"
    raise ValueError(
        f"{source} is neither a diffusers AutoencoderKLWan (no quant_conv.weight) "
        f"nor an original Wan VAE (no conv1.weight); its first keys: "
        f"{sorted(state)[:8]}"
    )


def read_vae(
    state: Mapping[str, Any],
    config: WanVAEConfig,
    *,
    layout: str = "auto",
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Our flat float32 parameters from a Wan VAE state dict in either layout; every missing,
    unexpected or mis-shaped key is named at once, before any tensor is read."""
    layout = detect_layout(state, source) if layout == "auto" else layout
    sd.check_keys(upstream_shapes(config, layout), sd.shapes(state), f"{source} ({layout} layout)")
    return {
        p: _to_ours(np.asarray(state[upstream_key(p, config, layout)], np.float32), p)
        for p in vae_spec(config)
    }


def export_vae(
    params: Mapping[str, np.ndarray], config: WanVAEConfig, layout: str
) -> dict[str, np.ndarray]:
    """Our flat parameters as a Wan VAE state dict in `layout` ('diffusers' | 'original')."""
    return {
        upstream_key(p, config, layout): np.ascontiguousarray(_to_upstream(np.asarray(x), p))
        for p, x in params.items()
    }


def _architecture(config: WanVAEConfig) -> dict[str, Any]:
    """`config` as the fields of diffusers' AutoencoderKLWan config.json."""
    return dict(
        _class_name="AutoencoderKLWan",
        base_dim=config.base_dim,
        decoder_base_dim=config.decoder_base_dim,
        z_dim=config.z_dim,
        dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(config.temporal_downsample),
        attn_scales=[],
        is_residual=True,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        patch_size=config.patch_size,
    )


def config_from_diffusers(fields: Mapping[str, Any]) -> WanVAEConfig:
    """The `WanVAEConfig` of a diffusers AutoencoderKLWan config.json (residual variant)."""
    return WanVAEConfig(
        base_dim=fields["base_dim"],
        decoder_base_dim=fields.get("decoder_base_dim") or fields["base_dim"],
        z_dim=fields["z_dim"],
        dim_mult=tuple(fields["dim_mult"]),
        num_res_blocks=fields["num_res_blocks"],
        temporal_downsample=tuple(fields["temperal_downsample"]),
        in_channels=fields["in_channels"],
        out_channels=fields["out_channels"],
        patch_size=fields["patch_size"],
    )


def read_upstream(src: str | pathlib.Path, config: WanVAEConfig | None = None):
    """(state dict, latents_mean, latents_std, config) of a diffusers `vae/` folder (or its
    pipeline root, or a .safetensors file) or an original `.pth`. The architecture is the
    folder's config.json (checked against `config` when given), else `config` or Wan2.2's."""
    src = pathlib.Path(src)
    if src.suffix in upstream.PTH_SUFFIXES:
        state, fields = upstream.read_pth(src), None
    else:
        state = sd.read_safetensors(src, subfolder="vae")
        folder = src / "vae" if (src / "vae").is_dir() else src if src.is_dir() else src.parent
        fields = upstream.read_config(folder)
    if fields is None:
        config = config or WanVAEConfig()
        if config.z_dim != len(WAN22_LATENTS_MEAN):
            raise ValueError(
                f"{src} has no config.json with latents_mean/std, and Wan2.2's are "
                f"for {len(WAN22_LATENTS_MEAN)} channels, not z_dim={config.z_dim}"
            )
        return (
            state,
            np.asarray(WAN22_LATENTS_MEAN, np.float32),
            np.asarray(WAN22_LATENTS_STD, np.float32),
            config,
        )
    if config is None:
        upstream.check_config(
            fields,
            {"_class_name": "AutoencoderKLWan", "is_residual": True, "attn_scales": []},
            f"{folder}/config.json",
        )
        config = config_from_diffusers(fields)
    else:
        found = {
            **fields,
            "decoder_base_dim": fields.get("decoder_base_dim") or fields.get("base_dim"),
        }
        upstream.check_config(found, _architecture(config), f"{folder}/config.json")
    return (
        state,
        np.asarray(fields["latents_mean"], np.float32),
        np.asarray(fields["latents_std"], np.float32),
        config,
    )


# ---- checkpoints


def load_vae(path: str, config: WanVAEConfig) -> tuple[Any, np.ndarray, np.ndarray]:
    """(nested params, latents_mean [z], latents_std [z]) as host arrays for `WanVAE(config)`,
    from anything `read_upstream` reads or a `convert wan-vae` checkpoint."""
    if not path:
        raise ConfigError(
            "config.codecs.video.path is empty: set it to a diffusers Wan2.2 vae/ "
            "folder, Wan2.2_VAE.pth or a `python -m harmony_jax.convert wan-vae` "
            "checkpoint"
        )
    root = pathlib.Path(path)
    if store.is_orbax_checkpoint(root):
        z = config.z_dim
        expected = {f"params/{k}": v.shape for k, v in vae_spec(config).items()}
        expected.update({"latents_mean": (z,), "latents_std": (z,)})
        sd.check_keys(expected, store.saved_shapes(path), f"Wan VAE checkpoint {path}")
        flat = store.restore_to_host(path, dict.fromkeys(expected, np.float32))
        params = {k[len("params/") :]: v for k, v in flat.items() if k.startswith("params/")}
        mean, std = flat["latents_mean"], flat["latents_std"]
    else:
        state, mean, std, _ = read_upstream(root, config)
        params = read_vae(state, config, source=path)
    logging.info("Wan VAE loaded from %s", path)
    return traverse_util.unflatten_dict(params, sep="/"), mean, std
