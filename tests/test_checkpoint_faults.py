"""A hostile disk and damaged checkpoints, on a tiny run made here (checkpoints 2 and 4).

A disk too small for one checkpoint is refused before training; a save that fails (a simulated
ENOSPC, raised at once or by the async writer) stops the run naming the last good step, which
still restores; a damaged latest step is named (which file), and train and sample fall back to
the newest intact one, or refuse listing what is there.
"""

import collections
import errno
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from entry_point import one_line as _one_line

from harmony_jax import errors, inference
from harmony_jax.inference import load_for_inference
from harmony_jax.training import checkpoint, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import tiny  # noqa: E402


def _config(total_steps=4):
    config = tiny.get_config()
    config.total_steps, config.checkpoint_every = total_steps, 2
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(_config(), workdir)
    return workdir


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the run (checkpoints 2 and 4) to damage."""
    return shutil.copytree(run, tmp_path / "run")


def _steps(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _params(step_dir):
    return jax.tree.leaves(jax.device_get(load_for_inference(step_dir)[1]))


# ---- 3. disk


def test_full_disk_is_refused_before_training(capsys, copy, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 4096))
    monkeypatch.setattr(loop, "make_train_step", lambda *a: pytest.fail("trained"))
    before = {
        p: (copy / "checkpoints" / p / "commit_success.txt").read_bytes() for p in _steps(copy)
    }
    line = _one_line(capsys, loop.train, _config(6), str(copy), code=errors.ENVIRONMENT_EXIT)
    assert line.startswith(f"error: {copy}/checkpoints: 0.0 MiB free, a checkpoint needs ")
    assert _steps(copy) == ["2", "4"] and before == {
        p: (copy / "checkpoints" / p / "commit_success.txt").read_bytes() for p in _steps(copy)
    }


def test_failed_save_names_the_last_good_step(tmp_path, monkeypatch):
    """ENOSPC from the save call itself, on a toy state: the step before stays the good one."""
    checkpointer = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    state = {"params": {"w": np.arange(4.0, dtype=np.float32)}}
    checkpointer.save(2, state, _config())
    checkpointer.wait()

    def full(self, step, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f"{tmp_path}/checkpoints/4")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(errors.DiskError) as info:
        checkpointer.save(4, state, _config())
    assert str(info.value) == (
        f"saving step 4 to {tmp_path}/checkpoints failed ({tmp_path}/checkpoints/4: No space "
        f"left on device); the run stopped; the last good checkpoint is step 2 "
        f"({tmp_path}/checkpoints/2), intact"
    )
    checkpointer.wait()  # reported once: the writer's later errors do not hide it
    checkpointer.close()
    assert checkpoint.steps_in(tmp_path / "checkpoints") == [2]


def test_disk_filling_mid_run_stops_it_at_once(capsys, run, copy, monkeypatch):
    """The async writer fails saving step 6: the next step reports it, naming step 4."""
    real_save = ocp.CheckpointManager.save
    saved, steps_run = [], []

    def save(self, step, *args, **kwargs):
        saved.append(step)
        return real_save(self, step, *args, **kwargs)

    def check_for_errors(self):
        if 6 in saved:
            raise OSError(errno.ENOSPC, "No space left on device", f"{copy}/checkpoints/6")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", check_for_errors)
    real_iterator = loop.make_train_iterator

    def counted(*args, **kwargs):
        for batch in real_iterator(*args, **kwargs):
            steps_run.append(1)
            yield batch

    monkeypatch.setattr(loop, "make_train_iterator", counted)
    line = _one_line(capsys, loop.train, _config(10), str(copy), code=errors.ENVIRONMENT_EXIT)
    assert line == (
        f"error: saving step 6 to {copy}/checkpoints failed ({copy}/checkpoints/6: "
        f"No space left on device); the run stopped; the last good checkpoint is "
        f"step 4 ({copy}/checkpoints/4), intact"
    )
    assert len(steps_run) == 3  # steps 5, 6 and the one that found the failure, not 10
    assert "4" in _steps(copy)  # the last good step restores as it was saved
    for a, b in zip(
        _params(copy / "checkpoints" / "4"), _params(os.path.join(run, "checkpoints", "4"))
    ):
        np.testing.assert_array_equal(a, b)


# ---- 4. damaged checkpoints


def _truncate_state_data(step_dir):
    """Empties the largest data file of a step (what a disk that filled mid-write leaves)."""
    files = [
        os.path.join(d, f)
        for d, _, fs in os.walk(step_dir / "state")
        for f in fs
        if os.path.basename(d) == "d"
    ]
    largest = max(files, key=os.path.getsize)
    open(largest, "wb").close()
    return largest


def test_train_falls_back_to_the_newest_intact_step(copy, caplog):
    truncated = _truncate_state_data(copy / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING):
        loop.train(_config(4), str(copy))
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 4 is damaged" in warned
    assert "resuming from step 2" in warned
    assert _steps(copy) == ["2", "4", "damaged-4"]  # step 4 trained again; nothing deleted
    assert os.path.exists(truncated.replace("/4/", "/damaged-4/"))


def test_sample_falls_back_or_refuses_listing_the_steps(capsys, copy, caplog, monkeypatch):
    meta = copy / "checkpoints" / "4" / "config" / "metadata"
    meta.write_text(meta.read_text()[:40])  # truncated JSON
    caches = []
    monkeypatch.setattr(inference, "enable_compile_cache", caches.append)
    with caplog.at_level(logging.WARNING):
        _, params = load_for_inference(copy)
    assert f"{meta}: damaged, not a JSON run config" in caplog.text
    expected = load_for_inference(copy / "checkpoints" / "2")[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    assert set(caches) == {inference.DEFAULT_DIR}  # the user's cache, not the saved config's
    line = _one_line(capsys, load_for_inference, copy / "checkpoints" / "4", code=errors.USER_EXIT)
    assert line.startswith(f"error: {copy}/checkpoints/4 is damaged ({meta}: ")
    assert line.endswith(f"other steps in {copy}/checkpoints: 2")
    state_meta = copy / "checkpoints" / "2" / "state" / "_METADATA"
    state_meta.write_text(state_meta.read_text()[:100])
    line = _one_line(capsys, load_for_inference, copy, code=errors.USER_EXIT)
    assert line.startswith(
        f"error: {copy}/checkpoints: no intact checkpoint; damaged: step 4 "
        f"({meta}: damaged, not a JSON run config"
    )
    assert f"step 2 ({state_meta}: " in line
    assert _steps(copy) == ["2", "4"]  # sampling moves nothing
