"""The demo text encoder (hashed word ids + a small trainable embedder) and transcript ids.

Word ids: lowercase, split on anything that is not a letter, id = 2 + crc32(word) mod
(vocab_size - 2). crc32 is stable across processes and Python versions (unlike `hash`), so ids
never change between runs. Id 0 is padding and id 1 an end token appended to every prompt (as T5
does): an empty prompt (the unconditional one of classifier-free guidance) still has one real
token, so attention over it is never fully masked.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
import zlib
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

PAD_ID = 0
END_ID = 1
# F5-TTS maps a token outside its vocabulary to vocabulary index 0 (' ' in its vocab.txt files).
FILLER_INDEX = 0
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script)


def word_ids(text: str, vocab_size: int) -> list[int]:
    """Hashed ids of the words of `text`, without padding or end token."""
    return [
        2 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 2) for w in _WORD.findall(text.lower())
    ]


def _named(init, *axes: str):
    return nn.with_logical_partitioning(init, axes)


class DemoTextEmbedder(nn.Module):
    """ids [B, L] -> [B, L, Dt]: token + learned position embedding, one pre-LN MLP, LayerNorm."""

    vocab_size: int
    max_len: int
    dim: int

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        if ids.shape[-1] > self.max_len:
            raise ValueError(
                f"DemoTextEmbedder: ids {ids.shape} longer than max_len={self.max_len}"
            )
        normal, zeros, ones = (
            nn.initializers.normal(0.02),
            nn.initializers.zeros,
            nn.initializers.ones,
        )
        kernel = nn.initializers.lecun_normal()
        x = nn.Embed(
            self.vocab_size, self.dim, name="token", embedding_init=_named(normal, "vocab", "embed")
        )(ids)  # [B, L, Dt]
        pos = self.param(
            "position", _named(normal, "length", "embed"), (self.max_len, self.dim)
        )  # [Lmax, Dt]
        x = x + pos[: ids.shape[-1]]
        h = nn.LayerNorm(
            name="mlp_norm", scale_init=_named(ones, "embed"), bias_init=_named(zeros, "embed")
        )(x)
        h = nn.Dense(
            2 * self.dim,
            name="mlp_in",
            kernel_init=_named(kernel, "embed", "mlp"),
            bias_init=_named(zeros, "mlp"),
        )(h)  # [B, L, 2 Dt]
        h = nn.Dense(
            self.dim,
            name="mlp_out",
            kernel_init=_named(kernel, "mlp", "embed"),
            bias_init=_named(zeros, "embed"),
        )(nn.gelu(h))
        return nn.LayerNorm(
            name="out_norm", scale_init=_named(ones, "embed"), bias_init=_named(zeros, "embed")
        )(x + h)  # [B, L, Dt]


@dataclasses.dataclass(frozen=True)
class DemoTextEncoder:
    """Host word tokenizer + `DemoTextEmbedder`, trained with the model."""

    vocab_size: int
    max_len: int
    dim: int
    trainable: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self):
        if self.vocab_size < 3 or self.max_len < 1:
            raise ValueError(
                f"DemoTextEncoder needs vocab_size >= 3 and max_len >= 1 "
                f"(config.codecs.text), got {self.vocab_size}, {self.max_len}"
            )

    @property
    def module(self) -> DemoTextEmbedder:
        return DemoTextEmbedder(self.vocab_size, self.max_len, self.dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(texts), self.max_len), np.int32)  # [B, L]
        for row, text in enumerate(texts):
            words = word_ids(text, self.vocab_size)
            if len(words) > self.max_len - 1:
                logging.warning(
                    "Text prompt truncated to %d words (config.codecs.text.max_len=%d): %r",
                    self.max_len - 1,
                    self.max_len,
                    text,
                )
                words = words[: self.max_len - 1]
            ids[row, : len(words) + 1] = words + [END_ID]
        return ids, ids != PAD_ID


def encode_transcript(texts: Sequence[str], max_len: int) -> np.ndarray:
    """Character ids for the transcript encoder: UTF-8 byte value + 1, 0 = padding -> int32
    [B, max_len]; longer transcripts are truncated with a warning. Valid UTF-8 never holds bytes
    0xF5-0xFF, so ids stay <= 245, inside `config.model.transcript.vocab_size` = 256."""
    codes = [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + 1 for t in texts]
    return _padded(codes, texts, max_len, "bytes")


def _padded(codes: Sequence[Sequence[int]], texts: Sequence, max_len: int, unit: str) -> np.ndarray:
    """Rows of ids -> int32 [B, max_len], 0-padded; longer rows truncated with a warning."""
    ids = np.zeros((len(codes), max_len), np.int32)  # [B, Lc]
    for row, (row_codes, text) in enumerate(zip(codes, texts)):
        if len(row_codes) > max_len:
            logging.warning(
                "Transcript truncated to %d %s (config.model.transcript.max_len): %r",
                max_len,
                unit,
                text,
            )
            row_codes = row_codes[:max_len]
        ids[row, : len(row_codes)] = row_codes
    return ids


def parse_vocab(text: str, source: str) -> dict[str, int]:
    """F5-TTS's vocabulary file (`get_tokenizer`): one token a line, its index the line number
    (line 0 is ' ' in F5's files). A token listed twice is refused: F5 would give the embedding
    table fewer rows than its largest index."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline ending the last line
        lines.pop()
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if token in vocab:
            raise ValueError(
                f"{source}: token {token!r} on lines {vocab[token] + 1} and {index + 1}"
            )
        vocab[token] = index
    if not vocab:
        raise ValueError(f"{source}: empty vocabulary")
    return vocab


def read_vocab(path: str | pathlib.Path) -> dict[str, int]:
    """`parse_vocab` of an F5-TTS `vocab.txt` (UTF-8, any newline convention, as F5 reads it)."""
    return parse_vocab(pathlib.Path(path).read_text(encoding="utf-8"), str(path))


def encode_transcript_vocab(
    texts: Sequence[str | Sequence[str]], vocab: Mapping[str, int], max_len: int
) -> np.ndarray:
    """Transcript ids for an F5-TTS-vocabulary encoder: vocabulary index + 1 (F5's `text + 1`),
    0 = padding -> int32 [B, max_len]. A text is a string (one token per character, F5's 'char'
    tokenizer) or a token list (e.g. F5's pinyin tokens); a token outside `vocab` takes
    FILLER_INDEX, as F5's `list_str_to_idx` does. Longer transcripts are truncated with a
    warning."""
    codes = [[vocab.get(token, FILLER_INDEX) + 1 for token in text] for text in texts]
    return _padded(codes, texts, max_len, "tokens")


@dataclasses.dataclass(frozen=True)
class TranscriptTokenizer:
    """Transcripts -> int32 ids [B, max_len] for the transcript encoder: F5-TTS vocabulary ids
    when a vocabulary is given (`encode_transcript_vocab`), else UTF-8 bytes (`encode_transcript`,
    the demo's). Picklable, so grain worker processes can run it."""

    max_len: int
    vocab: Mapping[str, int] | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self.vocab is None:
            return encode_transcript(texts, self.max_len)
        return encode_transcript_vocab(texts, self.vocab, self.max_len)
