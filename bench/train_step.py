"""The jitted train step per remat policy x attention kernel x compute dtype: step time, TFLOP/s,
MFU against this device's own matmul peak, and memory.

    python bench/train_step.py [--config configs/bench_2b.py] [--quick] [--steps 10] \
        [--remat none,full,dots,dots_no_batch] [--attention xla,cudnn,blockwise,splash] \
        [--dtype float32,bfloat16] [--nodonate] [--isolate|--noisolate] [--config.x=...]

`--quick`: a tiny model (`harmony_jax.perf.train_step.quick_config`) for a CPU, rows in one
process. Otherwise each row runs in a fresh process (`--isolate`), so its peak memory is its own
and an out-of-memory row is reported instead of ending the run. FLOPs are XLA's cost analysis of
the step with its layers unrolled (a scanned body would be counted once): MFU counts the model's
FLOPs, HFU adds what the row's remat policy recomputes. Inputs are latents and text embeddings
(`harmony_jax.plan.latent_system`: a run from latent records), parameters float32 in every row.
A second table sets each kernel's step time and memory against the blockwise row of the same
remat and dtype. Off TPU the splash rows run the Pallas kernel interpreted (their note says so):
a correctness row, not a speed one, run with `--quick` or when `--attention` is given, else
skipped with a note.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from harmony_jax.perf import train_step as bench

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "configs", "bench_2b.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Model, data and optimizer.")
_QUICK = flags.DEFINE_bool("quick", False, "A tiny model for a CPU instead of --config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per row (after --warmup).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per row after compiling.")
_REMAT = flags.DEFINE_list("remat", list(bench.REMATS), "Remat policies.")
_ATTENTION = flags.DEFINE_list("attention", list(bench.ATTENTIONS), "Attention kernels.")
_DTYPE = flags.DEFINE_list("dtype", list(bench.DTYPES), "Compute dtypes (params stay float32).")
_DONATE = flags.DEFINE_bool("donate", True, "Donate the train state to the step.")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Each row in a fresh process (default unless --quick)."
)


def main(argv):
    del argv
    config = bench.quick_config() if _QUICK.value else _CONFIG.value
    isolate = _ISOLATE.value if flags.FLAGS["isolate"].present else not _QUICK.value
    rows, peak, peak_what = bench.measure(
        config,
        remats=_REMAT.value,
        attentions=_ATTENTION.value,
        dtypes=_DTYPE.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        donate=_DONATE.value,
        isolate=isolate,
        interpret_splash=_QUICK.value or flags.FLAGS["attention"].present,
    )
    print(bench.describe(config, peak, peak_what))
    print(bench.table(rows, peak))
    ratios = bench.ratio_table(rows)
    if ratios:
        print("\n" + ratios)


if __name__ == "__main__":
    app.run(main)
