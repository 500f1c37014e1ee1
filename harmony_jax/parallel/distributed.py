"""Multi-host start-up: one process per host (TPU VM worker) or per GPU/node (SLURM)."""

from __future__ import annotations

import os

import jax
from absl import logging

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                  "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize() -> None:
    """`jax.distributed.initialize()` when the environment describes more than one process.

    JAX reads the coordinator, process count and id from the cluster (TPU metadata, SLURM
    variables, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
    """
    if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
            os.environ.get(k) for k in _MULTIHOST_ENV if k != "SLURM_NTASKS"):
        return
    jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
