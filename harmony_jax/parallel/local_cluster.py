"""A pod on one machine: K JAX processes of one command over localhost, as a slice's hosts run.

    python -m harmony_jax.parallel.local_cluster --processes 2 --devices 4 -- \
        python -m harmony_jax.train --config configs/tiny.py --workdir runs/pod

Each process gets the variables a cluster gives (`JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) and `--devices` simulated CPU devices; JAX's CPU
collectives (gloo) carry the traffic. Output lines are prefixed `[p<i>]` (or written to
`--log_dir/process_<i>.log`). When one process fails the others get `--grace` seconds to stop on
their own, then every process still running is killed by its PID; so is every process at
`--timeout`, or when this launcher is interrupted. The exit status is the first failure's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


def free_port() -> int:
    """A TCP port free on localhost now (the coordinator binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` with `devices` simulated CPU devices in place of any count they set."""
    flags = _DEVICE_FLAG.sub("", xla_flags).strip()
    return f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def process_env(
    index: int, count: int, devices: int, port: int, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of process `index` of `count`, each with `devices` CPU devices."""
    env = dict(os.environ if base is None else base)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
        XLA_FLAGS=with_device_count(env.get("XLA_FLAGS", ""), devices),
    )
    return env


class LocalCluster:
    """`count` processes of `command` (or of `command(i)` for process i, where processes are
    to differ), started together; `wait()` ends every one of them."""

    def __init__(
        self,
        command: Sequence[str] | Callable[[int], Sequence[str]],
        *,
        count: int,
        devices: int,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
    ):
        if count < 1 or devices < 1:
            raise ValueError(f"--processes {count} and --devices {devices} must be >= 1")
        port = free_port()
        self.logs: list[str | None] = []
        self.procs: list[subprocess.Popen] = []
        self._pumps: list[threading.Thread] = []
        for i in range(count):
            proc_env = process_env(i, count, devices, port, env)
            argv = list(command(i) if callable(command) else command)
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                path = os.path.join(log_dir, f"process_{i}.log")
                with open(path, "w") as out:
                    proc = subprocess.Popen(
                        argv, cwd=cwd, env=proc_env, stdout=out, stderr=subprocess.STDOUT
                    )
                self.logs.append(path)
            else:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=proc_env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                pump = threading.Thread(
                    target=_prefix_lines, args=(proc.stdout, f"[p{i}] "), daemon=True
                )
                pump.start()
                self._pumps.append(pump)
                self.logs.append(None)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self) -> None:
        """SIGKILL by PID every process still running, and reap it."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def wait(self, *, timeout: float = 3600.0, grace: float = 60.0) -> list[int]:
        """Exit codes once all have ended. A failure gives the others `grace` seconds; at
        `timeout` (or an exception here, e.g. Ctrl-C) every survivor is killed (-9)."""
        deadline, failed_at = time.monotonic() + timeout, None
        try:
            while any(p.poll() is None for p in self.procs):
                now = time.monotonic()
                if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs):
                    failed_at = now
                if now > deadline or (failed_at is not None and now > failed_at + grace):
                    break
                time.sleep(0.2)
        finally:
            self.kill()
            for pump in self._pumps:
                pump.join(timeout=5)
        return [p.returncode for p in self.procs]


def _prefix_lines(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harmony_jax.parallel.local_cluster",
        description="Run K JAX processes of one command on this machine, as a pod's hosts.",
    )
    parser.add_argument("--processes", type=int, default=2, help="JAX processes (hosts).")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per process.")
    parser.add_argument(
        "--log_dir", default=None, help="Write process_<i>.log here instead of prefixed lines."
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=24 * 3600.0,
        help="Kill every process after this many seconds.",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="Seconds the others get to stop after one process fails.",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the command every process runs."
    )
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- python -m harmony_jax.train ...")
    try:
        cluster = LocalCluster(
            command, count=args.processes, devices=args.devices, log_dir=args.log_dir
        )
    except (ValueError, OSError) as e:
        parser.exit(2, f"error: {e}\n")
    # SIGTERM to the launcher (scancel, a maintenance event) goes to every process, as a pod
    # delivers it to every host; they checkpoint and exit on their own.
    signal.signal(signal.SIGTERM, lambda *_: cluster.signal_all(signal.SIGTERM))
    codes = cluster.wait(timeout=args.timeout, grace=args.grace)
    for i, code in enumerate(codes):
        if code:
            print(f"process {i} (pid {cluster.pids[i]}) exited with {code}", file=sys.stderr)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
