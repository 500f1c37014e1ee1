"""`python -m harmony_jax.convert umt5`: a umT5 encoder checkpoint -> the orbax checkpoint
`config.codecs.text.path` loads. The weight tables and readers live beside the codec
(`codecs/umt5_weights.py`); this module only writes the conversion."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from harmony_jax.codecs.umt5_weights import (
    ARCHITECTURE_LEAF,
    architecture_of,
    find_spiece,
    read_umt5,
    read_upstream,
)
from harmony_jax.weights import store


def convert_checkpoint(
    src: str, dst: str, config: ml_collections.ConfigDict, *, overwrite: bool = False
) -> None:
    """`python -m harmony_jax.convert umt5`: a umT5 encoder (transformers / diffusers folder or
    Wan's original .pth) and its sentencepiece model -> an orbax checkpoint that
    `config.codecs.text.path` loads, in the source's dtype. The architecture is the source's own
    (config.json, or umT5-XXL's for a .pth), so `config` (the run config) is not read: the
    text encoder checks the checkpoint against its architecture when it loads it."""
    del config
    store.check_destination(dst, overwrite)
    spiece = find_spiece(src).read_bytes()
    state, umt5_config = read_upstream(src)
    params = read_umt5(state, umt5_config, source=src)
    tree = {
        "params": traverse_util.unflatten_dict(params, sep="/"),
        "spiece_model": np.frombuffer(spiece, np.uint8),
        ARCHITECTURE_LEAF: np.frombuffer(
            json.dumps(architecture_of(umt5_config)).encode(), np.uint8
        ),
    }
    store.save_tree(tree, dst, overwrite=overwrite)
    logging.info(
        "wrote %d umT5 arrays (%d parameters) and the tokenizer from %s to %s",
        len(params),
        sum(v.size for v in params.values()),
        src,
        dst,
    )
