"""Several JAX processes on localhost train as one: 2 processes x 4 CPU devices, over gloo.

Each case starts real `python -m harmony_jax.train` processes through `parallel.local_cluster`
(a coordinator on 127.0.0.1, every process ended by its PID whatever happens) and checks what a
pod needs: the same parameters as one process of 8 devices, a killed peer stopping the others at
once with one line, a restart resuming, SIGTERM to all saving one checkpoint, and runs started
inconsistently refused.
"""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import tiny  # noqa: E402
from harmony_jax.parallel.local_cluster import LocalCluster, with_device_count  # noqa: E402
from harmony_jax.training import loop  # noqa: E402
from harmony_jax.training.checkpoint import Checkpointer, CheckpointMismatchError  # noqa: E402

STEPS = 4
TIMEOUT = 600  # per cluster: a bound, never reached by a healthy run
FAST_FAILURE = [
    "--config.distributed.heartbeat_timeout_s=10",
    "--config.distributed.barrier_timeout_s=120",
]


def _train(workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "harmony_jax.train",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(workdir),
        f"--config.total_steps={STEPS}",
        *FAST_FAILURE,
        *overrides,
    ]


def _env(devices: int | None = None):
    """The test session's compile cache and XLA flags (`conftest.py`), with `devices` simulated
    devices where given (a cluster replaces the count by its own per process)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if devices is not None:
        flags = with_device_count(flags, devices)
    return dict(
        os.environ,
        XLA_FLAGS=flags,
        JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )


def _saved_state(workdir, step):
    """The train state of checkpoint `step` as numpy arrays, whoever wrote it."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        return checkpointer.restore(
            path,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree),
        )


def _cluster(command, log_dir):
    return LocalCluster(command, count=2, devices=4, cwd=ROOT, env=_env(), log_dir=str(log_dir))


def _text(path):
    with open(path) as f:
        return f.read()


def _last_line(path):
    return _text(path).rstrip().splitlines()[-1]


def _wait_for(path, cluster, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not os.path.isdir(path):
        codes = [p.poll() for p in cluster.procs]
        if any(c is not None for c in codes) or time.monotonic() > deadline:
            cluster.kill()
            pytest.fail(f"{path} never appeared (exit codes {codes}); logs: {cluster.logs}")
        time.sleep(0.1)


def _max_difference(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))


FSDP_OVER_HOSTS = ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]  # a pod's usual layout


@pytest.mark.slow
def test_two_processes_train_like_one_and_come_back_after_a_kill(tmp_path):
    """Parameters and optimizer state sharded over all 8 devices of both processes (the batch
    too); the same run on one process of 8 devices is the reference."""
    workdir = tmp_path / "pod"
    # 1. Kill process 1 once step 2 is saved: process 0 stops at once, naming what happened.
    cluster = _cluster(
        _train(workdir, "--config.checkpoint_every=1", *FSDP_OVER_HOSTS), tmp_path / "killed"
    )
    try:
        _wait_for(workdir / "checkpoints" / "2", cluster)
        os.kill(cluster.pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        codes = cluster.wait(timeout=120, grace=90)
        stopped_after = time.monotonic() - killed_at
    finally:
        cluster.kill()
    assert codes[1] == -signal.SIGKILL and codes[0] == 1, cluster.logs
    assert stopped_after < 60, f"the survivor took {stopped_after:.0f} s to stop"
    assert re.match(
        r"error: process 0 of 2: another process stopped during step \d+ .*the last "
        r"complete checkpoint is step \d+: restart every process",
        _last_line(cluster.logs[0]),
    ), _last_line(cluster.logs[0])

    # 2. Restart both with the same command: the run resumes and ends, sampling once.
    cluster = _cluster(
        _train(
            workdir,
            "--config.checkpoint_every=1",
            *FSDP_OVER_HOSTS,
            f"--config.sample_every={STEPS}",
        ),
        tmp_path / "resumed",
    )
    codes = cluster.wait(timeout=TIMEOUT, grace=60)
    assert codes == [0, 0], cluster.logs
    for i, log in enumerate(cluster.logs):
        text = _text(log)
        assert re.search(rf"\[p{i}/2\] resumed from .* at step \d", text), log
        assert f"[p{i}/2] step {STEPS} " in text  # every line says which process speaks
    assert sorted(os.listdir(workdir / "samples")) == [f"step_{STEPS}.mp4", f"step_{STEPS}_1.mp4"]
    assert len(glob.glob(str(workdir / "tb" / "events.*"))) == 2  # process 0's, one per start

    # 3. One process of 8 devices, uninterrupted, reaches the same parameters.
    subprocess.run(
        _train(tmp_path / "alone", *FSDP_OVER_HOSTS),
        cwd=ROOT,
        env=_env(devices=8),
        check=True,
        timeout=TIMEOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    alone, pod = _saved_state(tmp_path / "alone", STEPS), _saved_state(workdir, STEPS)
    assert _max_difference(alone["params"], pod["params"]) < 1e-6
    assert _max_difference(alone["opt_state"], pod["opt_state"]) < 1e-6

    # 4. The pod's run resumed by one process is refused, naming both counts.
    config = tiny.get_config()
    config.mesh.update(data=1, fsdp=-1)
    with pytest.raises(CheckpointMismatchError, match="a run of 2 processes; this one has 1"):
        loop.train(config, str(workdir))


@pytest.mark.slow
def test_sigterm_to_every_process_saves_one_checkpoint(tmp_path):
    """As `scancel` or a TPU maintenance event does: here through the launcher's CLI, which
    forwards its SIGTERM to every process. The mesh's sequence axis crosses the two processes
    (Ulysses over hosts), so both load the whole batch."""
    workdir, logs = tmp_path / "pod", tmp_path / "logs"
    mesh = [
        "--config.mesh.data=1",
        "--config.mesh.sequence=2",
        "--config.mesh.tensor=4",
        "--config.model.video.heads=8",
        "--config.model.audio.heads=8",
    ]
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harmony_jax.parallel.local_cluster",
            "--processes",
            "2",
            "--devices",
            "4",
            "--log_dir",
            str(logs),
            "--timeout",
            str(TIMEOUT),
            "--",
            *_train(workdir, "--config.total_steps=50", "--config.checkpoint_every=1", *mesh),
        ],
        cwd=ROOT,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.isdir(workdir / "checkpoints" / "2"):
            assert launcher.poll() is None and time.monotonic() < deadline, (
                f"no checkpoint 2; see {logs}"
            )
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()  # its own `finally` kills the processes by PID
            launcher.wait()
    saved = [
        int(
            re.search(
                r"preemption notice: saved step (\d+)", _text(logs / f"process_{i}.log")
            ).group(1)
        )
        for i in range(2)
    ]
    assert saved[0] == saved[1] == Checkpointer(str(workdir)).latest_step() < 50
    loss = lambda i: re.findall(r"step 2 .*loss=(\S+)", _text(logs / f"process_{i}.log"))
    assert loss(0) == loss(1) != []  # one computation, reported by both


def test_processes_started_with_different_configs_are_refused(tmp_path):
    command = lambda i: _train(tmp_path / "pod", *(["--config.optim.lr=0.002"] if i else []))
    cluster = _cluster(command, tmp_path / "logs")
    codes = cluster.wait(timeout=TIMEOUT, grace=60)
    assert codes == [2, 2], cluster.logs  # a user error (errors.USER_EXIT)
    for log in cluster.logs:
        assert _last_line(log) == (
            "error: process 1 was started with another config than process 0: "
            "config.optim.lr=0.002 there, 0.0001 on process 0; start every process with the "
            "same command"
        )
    assert not os.path.exists(tmp_path / "pod" / "checkpoints")  # nothing was started


def test_a_process_gets_the_device_count_it_is_given_and_keeps_its_other_flags():
    flags = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    assert with_device_count(flags, 8) == (
        "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"
    )
    assert with_device_count("", 4) == "--xla_force_host_platform_device_count=4"
