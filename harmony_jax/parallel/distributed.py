"""Multi-host start-up: one process per host (TPU VM worker) or per GPU (SLURM), and the few
cross-process agreements a run needs that must not ride on device collectives."""

from __future__ import annotations

import glob
import json
import logging as std_logging
import os
from typing import Any

import jax
from absl import logging
from orbax.checkpoint import multihost

from harmony_jax.config_diff import first_difference
from harmony_jax.errors import ConfigError

_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


class ProcessMismatchError(ConfigError):
    """The processes of one run were started differently (another config, another count)."""


def _on_cloud_tpu_vm() -> bool:
    """TPU chips on this host (v4/v5p: /dev/accel*, v5e/v6e: /dev/vfio/N). A TPU VM keeps its
    slice's workers in instance metadata, not in the environment, so the variables above are
    usually absent there."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def is_multihost_environment() -> bool:
    """Whether this process was started as one of several (srun, a TPU slice, explicit env)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return any(os.environ.get(k) for k in _CLUSTER_ENV) or _on_cloud_tpu_vm()


def maybe_initialize(timeouts: Any | None = None) -> None:
    """`jax.distributed.initialize()` when the environment describes a cluster; else nothing.

    JAX reads the coordinator, process count and id from the cluster: SLURM variables (the
    coordinator is the first node of the step, one process per task; each task sees all of its
    node's GPUs and takes the one its local rank names) or Cloud TPU metadata. Anywhere else
    (localhost, a bare cluster) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID; CPU devices then talk over gloo. `timeouts` (`config.distributed`) bounds
    the wait for the peers at start-up, the silence after which a dead peer fails the run, and
    the wait at shutdown. Must run before any other JAX call; a second call is a no-op.
    """
    if jax.distributed.is_initialized() or not is_multihost_environment():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    kwargs = {}
    if timeouts is not None:
        kwargs = dict(
            initialization_timeout=int(timeouts.init_timeout_s),
            heartbeat_timeout_seconds=int(timeouts.heartbeat_timeout_s),
            shutdown_timeout_seconds=int(timeouts.shutdown_timeout_s),
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts (and tests)
    jax.distributed.initialize(
        num_processes=int(count) if count else None,
        process_id=int(index) if index else None,
        **kwargs,
    )
    _name_process_in_logs()
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


class _ProcessPrefix(std_logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def filter(self, record: std_logging.LogRecord) -> bool:
        record.msg = f"{self._prefix}{record.msg}"
        return True


def _name_process_in_logs() -> None:
    """Every log line of a multi-process run says which process speaks: `[p3/64] ...`."""
    prefix = f"[p{jax.process_index()}/{jax.process_count()}] "
    logging.get_absl_handler().addFilter(_ProcessPrefix(prefix))


def barrier(name: str, timeout_s: float) -> None:
    """Every process reaches `name` before any goes past it (single process: nothing).

    The coordination service's barrier, not a device collective: the first collective between
    CPU hosts opens its gloo context with a fixed 30 s deadline, so processes whose compiles
    end far apart must meet here first. A peer that never comes raises after `timeout_s`."""
    if jax.process_count() == 1:
        return
    multihost.get_jax_distributed_client().wait_at_barrier(name, int(timeout_s * 1000))


def check_same_config(config, timeout_s: float) -> None:
    """Raises ProcessMismatchError on every process when any was started with another config,
    naming the first key that differs and both values (exchanged through the coordinator's
    key-value store, before anything is compiled)."""
    if jax.process_count() == 1:
        return
    client = multihost.get_jax_distributed_client()
    client.key_value_set(f"harmony/config/{jax.process_index()}", config.to_json(sort_keys=True))
    barrier("harmony_config_published", timeout_s)
    read = lambda i: json.loads(
        client.blocking_key_value_get(f"harmony/config/{i}", int(timeout_s * 1000))
    )
    reference = read(0)
    for other in range(1, jax.process_count()):
        difference = first_difference(reference, read(other))
        if difference is not None:
            key, on_0, there = difference
            raise ProcessMismatchError(
                f"process {other} was started with another config than process 0: "
                f"{key}={there!r} there, {on_0!r} on process 0; start every process with the "
                f"same command"
            )
