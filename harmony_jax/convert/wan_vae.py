"""`python -m harmony_jax.convert wan-vae`: a Wan VAE checkpoint -> the orbax checkpoint
`config.codecs.video.path` loads. The weight tables and readers live beside the codec
(`codecs/wan_vae_weights.py`); this module only writes the conversion."""

from __future__ import annotations

import ml_collections
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.wan_vae_weights import read_upstream, read_vae
from harmony_jax.weights import store


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert wan-vae`: a Wan VAE (diffusers folder or original .pth)
    -> an orbax checkpoint that `config.codecs.video.path` loads. The architecture is the
    source's own (config.json, or Wan2.2's for a .pth), so `config` (the run config) is not read:
    the codec checks the checkpoint against its architecture when it loads it."""
    del config
    store.check_destination(dst, overwrite)
    state, mean, std, vae_config = read_upstream(src)
    params = read_vae(state, vae_config, source=src)
    tree = {
        "params": traverse_util.unflatten_dict(params, sep="/"),
        "latents_mean": mean,
        "latents_std": std,
    }
    store.save_tree(tree, dst, overwrite=overwrite)
    logging.info(
        "wrote %d Wan VAE arrays (%d parameters) from %s to %s",
        len(params),
        sum(v.size for v in params.values()),
        src,
        dst,
    )
