"""Preemption: SIGTERM (spot/preemptible TPU and GPU capacity) asks the loop to checkpoint the
current step and exit cleanly; on multi-host runs every process agrees on the step to save."""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`should_stop(step)` turns True once a preemption notice has arrived.

    Single process: our SIGTERM handler sets a flag. Several processes: JAX's preemption sync
    (started by `jax.distributed.initialize`) propagates the notice and picks one common step,
    so all hosts save the same checkpoint.
    """

    def __init__(self):
        self._event = threading.Event()
        self._multihost = jax.process_count() > 1
        self._previous = None
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        del signum, frame
        self._event.set()

    def should_stop(self, step: int) -> bool:
        if self._multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
