"""`python -m harmony_jax.convert mmaudio-vae`: MMAudio's VAE checkpoint -> the orbax checkpoint
`config.codecs.audio.path` loads. The weight tables and readers live beside the codec
(`codecs/mmaudio_vae_weights.py`); this module only writes the conversion."""

from __future__ import annotations

import ml_collections
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.mmaudio_vae_weights import config_from_state, read_upstream, read_vae
from harmony_jax.weights import store


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert mmaudio-vae`: MMAudio's VAE (v1-16.pth / v1-44.pth) -> an
    orbax checkpoint that `config.codecs.audio.path` loads. The architecture is the source's
    own (`config_from_state`), so `config` (the run config) is not read: the codec checks the
    checkpoint against its variant when it loads it."""
    del config
    store.check_destination(dst, overwrite)
    state = read_upstream(src)
    params, mean, std = read_vae(state, config_from_state(state, src), source=src)
    tree = {
        "params": traverse_util.unflatten_dict(params, sep="/"),
        "data_mean": mean,
        "data_std": std,
    }
    store.save_tree(tree, dst, overwrite=overwrite)
    logging.info(
        "wrote %d MMAudio VAE arrays (%d parameters) from %s to %s",
        len(params),
        sum(v.size for v in params.values()),
        src,
        dst,
    )
