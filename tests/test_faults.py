"""Faults around the training loop, on the tiny config.

A SIGTERM mid-run checkpoints the current step and returns; a SIGKILL at a random step loses
nothing a restart cannot redo bit for bit; a NaN batch is skipped (counted, no NaN ever
checkpointed) or halts the run naming the step, as `config.optim.on_nonfinite` says; a checkpoint
of another model or a workdir that cannot be written is named before anything runs.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import tiny  # noqa: E402
from harmony_jax.inference import load_for_inference  # noqa: E402
from harmony_jax.training import loop  # noqa: E402
from harmony_jax.training.checkpoint import Checkpointer, CheckpointMismatchError  # noqa: E402


def _config(**overrides):
    config = tiny.get_config()
    config.update({"checkpoint_every": 100, **overrides})  # checkpoints only when asked
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return config


def _patched_batches(monkeypatch, on_step):
    """Wraps the train iterator: `on_step(step, batch)` may edit a batch or raise a signal."""
    real = loop.make_train_iterator

    def make(config, text_encoder, *, seed, start_step=0, **kw):
        def gen():
            for step, batch in enumerate(
                real(config, text_encoder, seed=seed, start_step=start_step, **kw), start_step
            ):
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
    state = loop.train(_config(total_steps=4), str(tmp_path))
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
    state = loop.train(_config(total_steps=3), str(tmp_path))
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
        loop.train(config, str(tmp_path))
    assert Checkpointer(str(tmp_path)).latest_step() is None  # nothing written after the NaN


# ---- SIGKILL: a restart redoes exactly what was lost

_KILL_STEPS = 6


def _train_command(workdir):
    return [
        sys.executable,
        "-m",
        "harmony_jax.train",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        f"--config.total_steps={_KILL_STEPS}",
        "--config.checkpoint_every=1",
    ]


def _env():
    """The test session's simulated devices and compile cache, for a training subprocess."""
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )


def _kill_when_saved(workdir, step, log):
    """Starts training, SIGKILLs it as soon as checkpoint `step` is complete (orbax renames a
    finished step into place; the next step, and maybe its async save, is then under way)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _train_command(workdir), cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
    saved = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + 600
    while not os.path.isdir(saved):
        assert proc.poll() is None, f"training ended first:\n{open(log).read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in 10 min"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_restart_is_bit_identical(tmp_path):
    kill_after = random.Random(8).randint(1, _KILL_STEPS - 2)  # fixed seed: a reproducible step
    workdir = tmp_path / "killed"
    _kill_when_saved(workdir, kill_after, tmp_path / "killed.log")
    assert Checkpointer(str(workdir)).latest_step() < _KILL_STEPS
    done = subprocess.run(
        _train_command(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", done.stderr).group(1))
    assert kill_after <= resumed < _KILL_STEPS

    reference = loop.train(
        _config(total_steps=_KILL_STEPS, checkpoint_every=1), str(tmp_path / "uninterrupted")
    )
    restarted = Checkpointer(str(workdir)).restore(_KILL_STEPS, reference)
    assert int(restarted.step) == _KILL_STEPS
    for name in ("params", "opt_state"):
        pairs = zip(
            jax.tree.leaves(getattr(reference, name)), jax.tree.leaves(getattr(restarted, name))
        )
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs), name


# ---- a checkpoint of another model, a workdir that cannot be written


def _snapshot(directory):
    """Every file under `directory` with its bytes and modification time."""
    return {
        os.path.relpath(os.path.join(d, n), directory): (
            os.stat(os.path.join(d, n)).st_mtime_ns,
            open(os.path.join(d, n), "rb").read(),
        )
        for d, _, names in os.walk(directory)
        for n in names
    }


def _no_train_step(monkeypatch):
    monkeypatch.setattr(
        loop, "make_train_step", lambda *a, **k: pytest.fail("a train step was built")
    )


def test_checkpoint_of_another_model_is_named_and_left_alone(monkeypatch, tmp_path):
    workdir = str(tmp_path / "run")
    loop.train(_config(total_steps=1), workdir)  # saves its last step
    before = _snapshot(workdir)
    wider = _config(total_steps=2)
    wider.model.video.ffn_dim = 128  # the run was trained with 64
    _no_train_step(monkeypatch)
    message = (
        r"checkpoints/1 was written with config.model.video.ffn_dim=64; this run has "
        r"config.model.video.ffn_dim=128: resume with the run's own config"
    )
    with pytest.raises(CheckpointMismatchError, match=message):
        loop.train(wider, workdir)
    assert _snapshot(workdir) == before  # not even config.json was rewritten

    # The inference loader, if the code's model no longer matches a run's saved config.
    step_dir = tmp_path / "step"
    shutil.copytree(os.path.join(workdir, "checkpoints", "1"), step_dir)
    saved = json.loads((step_dir / "config" / "metadata").read_text())
    saved["model"]["video"]["ffn_dim"] = 128
    (step_dir / "config" / "metadata").write_text(json.dumps(saved))
    with pytest.raises(CheckpointMismatchError, match=f"{step_dir}: parameter .* in the config"):
        load_for_inference(step_dir)


def _no_build(monkeypatch):
    monkeypatch.setattr(loop, "build_system", lambda *a: pytest.fail("the check came late"))


def test_workdir_under_a_file_is_named_before_anything_compiles(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    _no_build(monkeypatch)
    with pytest.raises(
        loop.WorkdirError,
        match=f"--workdir {blocker}/run cannot be created \\(.*\\): {blocker} is a file",
    ):
        loop.train(_config(), str(blocker / "run"))
    with pytest.raises(loop.WorkdirError, match=f"--workdir {blocker} is a file"):
        loop.train(_config(), str(blocker))
    done = subprocess.run(
        _train_command(blocker / "run"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --workdir {blocker}/run cannot be created (Not a directory): {blocker} is a file"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_read_only_workdir_is_named(monkeypatch, tmp_path):
    workdir = tmp_path / "ro"
    workdir.mkdir(mode=0o500)
    _no_build(monkeypatch)
    with pytest.raises(loop.WorkdirError, match=f"--workdir {workdir} is not writable"):
        loop.train(_config(), str(workdir))
