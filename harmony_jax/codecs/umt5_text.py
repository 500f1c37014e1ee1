"""The frozen umT5 text encoder of Wan2.2 (`config.codecs.text.name='umt5'`): the checkpoint's
sentencepiece tokenizer, Wan's prompt cleaning, and the `codecs.umt5` network with weights
read on first use (`codecs.umt5_weights`).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.codecs.umt5 import PAD_ID, UMT5Config, UMT5Encoder
from harmony_jax.codecs.umt5_weights import load_spiece, load_umt5


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (html unescaped twice, whitespace collapsed) without its
    `ftfy.fix_text`, which only repairs mis-decoded text."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit keys on it
class UMT5TextEncoder:
    """Sentencepiece ids (+ end token, padded with 0 to `max_len`) -> frozen umT5 embeddings.

    `path`: a transformers / diffusers folder (`text_encoder/` with safetensors, tokenizer in
    `tokenizer/`, alongside or inside), the original `models_t5_umt5-xxl-enc-bf16.pth` (tokenizer
    in `google/umt5-xxl/` beside it) or a `python -m harmony_jax.convert umt5` checkpoint. The
    tokenizer is read on the first `tokenize`, the weights (`params`) on first use; they never
    join the trained parameters.
    """

    path: str
    max_len: int
    config: UMT5Config = UMT5Config()
    trainable: bool = dataclasses.field(default=False, init=False)

    @property
    def dim(self) -> int:
        return self.config.d_model

    @functools.cached_property
    def module(self) -> UMT5Encoder:
        return UMT5Encoder(self.config)

    @functools.cached_property
    def params(self):
        # First use may be inside a trace (jit, eval_shape): load and place concrete arrays.
        with jax.ensure_compile_time_eval():
            return jax.tree.map(jnp.asarray, load_umt5(self.path, self.config))

    @functools.cached_property
    def _sentencepiece(self):
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=load_spiece(self.path))
        if processor.pad_id() != PAD_ID:
            raise ValueError(
                f"the tokenizer of {self.path} pads with id {processor.pad_id()}, "
                f"umT5 with {PAD_ID}"
            )
        return processor

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        sp = self._sentencepiece
        ids = np.full((len(texts), self.max_len), PAD_ID, np.int32)  # [B, L]
        for row, text in enumerate(texts):
            pieces = sp.encode(clean_prompt(text))
            if len(pieces) > self.max_len - 1:
                logging.warning(
                    "Text prompt truncated to %d tokens (config.codecs.text.max_len=%d): %r",
                    self.max_len - 1,
                    self.max_len,
                    text,
                )
                pieces = pieces[: self.max_len - 1]
            ids[row, : len(pieces) + 1] = [*pieces, sp.eos_id()]
        return ids, ids != PAD_ID
