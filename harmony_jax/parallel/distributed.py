"""Multi-host start-up: one process per host (TPU VM worker) or per GPU (SLURM)."""

from __future__ import annotations

import glob
import os

import jax
from absl import logging

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                "MEGASCALE_COORDINATOR_ADDRESS")


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


def maybe_initialize() -> None:
    """`jax.distributed.initialize()` when the environment describes a cluster; else nothing.

    JAX reads the coordinator, process count and id from the cluster: SLURM variables (the
    coordinator is the first node of the step, one process per task; each task sees all of its
    node's GPUs and takes the one its local rank names) or Cloud TPU metadata. Anywhere else
    (a test on localhost, a bare cluster) set JAX_COORDINATOR_ADDRESS=host:port,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. Must run before any other JAX call; a second call is a
    no-op.
    """
    if jax.distributed.is_initialized() or not is_multihost_environment():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
