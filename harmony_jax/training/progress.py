"""What the training loop shows: a progress bar with steps/s and ETA on a terminal, plain log
lines (step, losses, steps/s, ETA) when the output goes to a file, a pipe or a cluster's log.

Metrics also go to TensorBoard either way. On a terminal the metric lines are written above the
bar (`tqdm.write`), so the history stays readable and the bar stays at the bottom.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from absl import logging
from tqdm import tqdm


def metric_line(step: int, metrics: dict[str, float]) -> str:
    return f"step {step} " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


class Progress:
    """Counts steps from `start` to `total`; `log` is called at each `log_every` step."""

    def __init__(
        self,
        start: int,
        total: int,
        writer=None,
        stream: IO[str] | None = None,
        show_bar: bool = True,
    ):
        self.total, self.writer = total, writer
        self.stream = sys.stderr if stream is None else stream
        self.t_last, self.steps_since = time.time(), 0
        self.estimated = False  # the first log line is preceded by the measured rate and ETA
        self.bar = None
        if show_bar and start < total and self.stream.isatty():
            self.bar = tqdm(
                total=total,
                initial=start,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def step(self) -> None:
        self.steps_since += 1
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One line of metrics; steps/s is measured since the previous line."""
        now = time.time()
        steps_per_s = self.steps_since / max(now - self.t_last, 1e-9)
        self.t_last, self.steps_since = now, 0
        line = metric_line(step, metrics)
        eta = (self.total - step) / max(steps_per_s, 1e-9)
        if not self.estimated and step < self.total:
            self.estimated = True
            self._show(
                f"measured {steps_per_s:.2f} steps/s on this machine (compiled, up to step "
                f"{step}): the remaining {self.total - step} steps take about {_minutes(eta)}"
            )
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            logging.info("%s | %.2f steps/s | ETA %dm%02ds", line, steps_per_s, eta // 60, eta % 60)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/steps_per_s", steps_per_s, step)
            self.writer.flush()

    def _show(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            logging.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
