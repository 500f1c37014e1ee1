"""End to end on the tiny config: train, checkpoint, resume exactly, periodic samples, logs."""

import os

import jax
import numpy as np
import pytest
from clips import read_all

from configs import tiny
from harmony_jax.training.checkpoint import read_config
from harmony_jax.training.loop import train


def _config(**overrides):
    config = tiny.get_config()
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    state = train(_config(sample_every=4), workdir)
    return workdir, state


def test_resume_continues_exactly(uninterrupted, tmp_path):
    _, full = uninterrupted
    workdir = str(tmp_path)
    first = train(_config(total_steps=2), workdir)
    assert int(first.step) == 2
    resumed = train(_config(), workdir)  # same command, longer budget
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_artifacts(uninterrupted):
    workdir, state = uninterrupted
    assert int(state.step) == 4 and int(state.skipped) == 0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    config, step_dir = read_config(workdir)
    assert config.total_steps == 4 and step_dir.name == "4"
    assert any(name.startswith("events") for name in os.listdir(os.path.join(workdir, "tb")))
    frames, fps, audio, rate = read_all(os.path.join(workdir, "samples", "step_4.mp4"))
    c = tiny.get_config()
    assert frames.shape == (c.data.num_frames, c.data.height, c.data.width, 3)
    assert fps == c.data.fps and rate == c.data.sample_rate
    assert abs(audio.shape[0] - c.data.num_frames / c.data.fps * rate) <= 0.01 * rate
