"""`python -m harmony_jax.convert bigvgan`: a BigVGAN generator -> the orbax checkpoint
`config.codecs.audio.vocoder_path` loads. The weight tables and readers live beside the codec
(`codecs/bigvgan_weights.py`); this module only writes the conversion."""

from __future__ import annotations

import ml_collections
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.bigvgan_weights import read_bigvgan, read_upstream
from harmony_jax.codecs.mmaudio import variant_of
from harmony_jax.weights import store


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert bigvgan`: a BigVGAN generator -> an orbax checkpoint that
    `config.codecs.audio.vocoder_path` loads. The architecture is the `config.json` beside the
    source, else the vocoder of `config.codecs.audio.variant`."""
    store.check_destination(dst, overwrite)
    state, found = read_upstream(src)
    vocoder = found or variant_of(config).vocoder
    params = read_bigvgan(state, vocoder, source=src)
    store.save_tree(
        {"params": traverse_util.unflatten_dict(params, sep="/")}, dst, overwrite=overwrite
    )
    logging.info(
        "wrote %d BigVGAN arrays (%d parameters) from %s to %s",
        len(params),
        sum(v.size for v in params.values()),
        src,
        dst,
    )
