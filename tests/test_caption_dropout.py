"""Caption dropout: the train step's empty-prompt rows are exactly what text CFG feeds as its
unconditional side, both captions of a row drop together, and the rest stay untouched."""

import jax
import numpy as np

from configs import tiny
from harmony_jax.generation import _token_batch, prompt_batch
from harmony_jax.system import build_system
from harmony_jax.training.step import drop_captions

CAPTIONS = [f"a red ball bounces fast number {i}" for i in range(64)]


def _batches():
    system = build_system(tiny.get_config())
    batch = prompt_batch(system, CAPTIONS, [f"tones {c}" for c in CAPTIONS])
    return system, batch, _token_batch(system, [""] * len(CAPTIONS))


def _dropped_rows(out, batch, uncond, kind):
    ids, mask = out[f"{kind}_text_ids"], out[f"{kind}_text_mask"]
    is_empty = np.all(ids == uncond[f"{kind}_text_ids"], axis=1) & np.all(
        mask == uncond[f"{kind}_text_mask"], axis=1
    )
    is_kept = np.all(ids == batch[f"{kind}_text_ids"], axis=1) & np.all(
        mask == batch[f"{kind}_text_mask"], axis=1
    )
    assert np.all(is_empty ^ is_kept), kind  # each row is either the prompt or the empty one
    return is_empty


def test_dropped_rows_are_the_cfg_unconditional_prompt():
    system, batch, uncond = _batches()
    out = jax.jit(lambda b, k: drop_captions(system, b, k, 0.5))(batch, jax.random.key(3))
    video = _dropped_rows(out, batch, uncond, "video")
    audio = _dropped_rows(out, batch, uncond, "audio")
    np.testing.assert_array_equal(video, audio)  # both captions of a row drop together
    assert 16 <= video.sum() <= 48  # about half of 64
    np.testing.assert_array_equal(out["transcript_ids"], batch["transcript_ids"])


def test_rates_zero_and_one():
    system, batch, uncond = _batches()
    kept = drop_captions(system, batch, jax.random.key(0), 0.0)
    assert kept is batch
    dropped = drop_captions(system, batch, jax.random.key(0), 1.0)
    assert _dropped_rows(dropped, batch, uncond, "video").all()
    assert _dropped_rows(dropped, batch, uncond, "audio").all()
