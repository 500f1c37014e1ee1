"""Preemption and non-finite guards of the training loop, on the tiny config.

A SIGTERM mid-run checkpoints the current step and returns; a NaN batch is skipped (counted, no
NaN ever checkpointed) or halts the run naming the step, as `config.optim.on_nonfinite` says.
"""

import os
import signal
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import tiny  # noqa: E402

from harmony_jax.training import loop  # noqa: E402
from harmony_jax.training.checkpoint import Checkpointer  # noqa: E402


def _config(**overrides):
    config = tiny.get_config()
    config.update(dict(checkpoint_every=100, **overrides))  # checkpoints only when asked
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return config


def _patched_batches(monkeypatch, on_step):
    """Wraps the train iterator: `on_step(step, batch)` may edit a batch or raise a signal."""
    real = loop.make_train_iterator

    def make(config, text_encoder, *, seed, start_step=0, **kw):
        def gen():
            for step, batch in enumerate(real(config, text_encoder, seed=seed,
                                              start_step=start_step, **kw), start_step):
                yield on_step(step, batch)
        return gen()
    monkeypatch.setattr(loop, "make_train_iterator", make)


def _all_finite(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_sigterm_checkpoints_current_step_and_returns(monkeypatch, tmp_path):
    def on_step(step, batch):
        if step == 1:  # the notice arrives while step 2 (1-based) is being prepared
            os.kill(os.getpid(), signal.SIGTERM)
        return batch
    _patched_batches(monkeypatch, on_step)
    handler_before = signal.getsignal(signal.SIGTERM)
    state = loop.train_and_evaluate(_config(total_steps=4), str(tmp_path))
    assert int(state.step) == 2
    assert Checkpointer(str(tmp_path)).latest_step() == 2
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the run put it back


def _nan_at(step_to_poison):
    def on_step(step, batch):
        if step == step_to_poison:
            batch = dict(batch, video=np.full_like(batch["video"], np.nan))
        return batch
    return on_step


@pytest.mark.slow
def test_nan_batch_is_skipped_and_never_checkpointed(monkeypatch, tmp_path):
    _patched_batches(monkeypatch, _nan_at(1))
    state = loop.train_and_evaluate(_config(total_steps=3), str(tmp_path))
    assert int(state.step) == 3 and int(state.skipped) == 1
    assert _all_finite(state.params) and _all_finite(state.opt_state)
    restored = Checkpointer(str(tmp_path)).restore(3, state)
    assert _all_finite(restored.params)


@pytest.mark.slow
def test_nan_batch_halts_when_configured(monkeypatch, tmp_path):
    _patched_batches(monkeypatch, _nan_at(1))
    config = _config(total_steps=3)
    config.optim.on_nonfinite = "halt"
    with pytest.raises(loop.NonFiniteError, match=r"step 2: non-finite"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert Checkpointer(str(tmp_path)).latest_step() is None  # nothing written after the NaN
