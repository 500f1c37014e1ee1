"""F5-TTS vocabulary ids reach the data pipeline and the sampler via `init.transcript_from`."""

import numpy as np
import pytest

from configs import tiny
from harmony_jax import generation
from harmony_jax.codecs.text import TranscriptTokenizer
from harmony_jax.data.pipeline import make_train_iterator
from harmony_jax.system import build_system

VOCAB = [" ", "a", "b", "c", "h", "i"]  # F5's vocab.txt: one token a line, index = line number


def _config(tmp_path, vocab=VOCAB):
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = tiny.get_config()
    config.init.transcript_from = str(tmp_path)  # an F5-TTS folder holding vocab.txt
    config.model.transcript.vocab_size = len(vocab) + 1  # + the padding row
    return config


def test_tokenizer_byte_ids_by_default_and_vocab_ids_with_a_vocab():
    assert TranscriptTokenizer(4)(["hi"]).tolist() == [[ord("h") + 1, ord("i") + 1, 0, 0]]
    vocab = {t: i for i, t in enumerate(VOCAB)}
    # vocab index + 1; "z" is outside the vocabulary -> F5's filler (index 0) + 1
    assert TranscriptTokenizer(5, vocab)(["hi z"]).tolist() == [[5, 6, 1, 1, 0]]


def test_transcript_from_sets_the_ids_of_pipeline_and_sampler(tmp_path):
    config = _config(tmp_path)
    system = build_system(config)
    batch = generation.prompt_batch(system, ["a ball"], transcripts=["hi ab"])
    assert batch["transcript_ids"][0, :5].tolist() == [5, 6, 1, 2, 3]
    train_batch = next(
        make_train_iterator(
            config,
            system.text_encoder,
            seed=0,
            block=0,
            blocks=1,
            transcript_tokenizer=system.transcript_tokenizer,
        )
    )
    ids = train_batch["transcript_ids"]
    assert ids.max() < config.model.transcript.vocab_size and np.all(ids == 0)  # no speech here


def test_vocab_that_does_not_fit_the_model_is_named(tmp_path):
    config = _config(tmp_path)
    config.model.transcript.vocab_size = 256
    with pytest.raises(ValueError, match="transcript_from.*7 rows.*vocab_size is 256"):
        build_system(config)
