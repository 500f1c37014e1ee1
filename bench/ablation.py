"""The paper's ablation ladder (Table 3) at small scale on the sounding-shapes world.

    python bench/ablation.py --quick --workdir runs/ablation_quick     # CPU: minutes per run
    python bench/ablation.py --workdir runs/ablation                   # one GPU

Trains global cross-attention (Ovi-like) -> + GLDI -> + RoPE alignment -> + Cross-Task Synergy,
samples each with plain CFG, then the last with SyncCFG; plus extra rows for the local window,
the CTS weights and the SyncCFG scales. Every rung has the same budget and seeds, nothing is
tuned per rung. Prints the table (mean +/- std over seeds), writes `results.json` and
`ablation.png` (the ladder, and sync vs step for joint-only vs CTS) to the workdir. Rerunning
continues an interrupted ladder: trainings resume and finished evaluations are read back.
"""

from __future__ import annotations

import os
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from harmony_jax.config_cli import parse_flags
from harmony_jax.eval.ablation import LADDER, Ladder, extra_variants, format_table, plot, run_ladder

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Base run config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Runs, results.json, ablation.png.")
_QUICK = flags.DEFINE_bool("quick", False, "CPU size: short trainings, fewer clips.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (0 .. seeds-1).")
_EXTRAS = flags.DEFINE_bool("extras", True, "Also the rows the paper did not ablate.")
_EXTRA_SEEDS = flags.DEFINE_integer("extra_seeds", 0, "Seeds of the extra rows (0: --seeds).")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps per run (0: the preset's).")


def main(argv):
    del argv
    preset = "quick" if _QUICK.value else "full"
    ladder = Ladder.from_preset(_CONFIG.value, preset, _WORKDIR.value, steps=_STEPS.value)
    steps, batch = ladder.base.total_steps, ladder.base.batch_size
    variants = LADDER + (extra_variants() if _EXTRAS.value else ())
    start = time.time()
    extra_seeds = range(_EXTRA_SEEDS.value or _SEEDS.value)
    stats, curves = run_ladder(ladder, range(_SEEDS.value), variants, extra_seeds)
    png = os.path.join(_WORKDIR.value, "ablation.png")
    plot(stats, variants, curves, png)
    device = jax.devices()[0]
    extra = f" ({len(extra_seeds)} for the extra rows)" if _EXTRAS.value else ""
    print(
        f"\n{len(variants)} variants, {_SEEDS.value} seeds{extra}, {steps} steps of batch "
        f"{batch} per run, {ladder.num_clips} held-out clips; "
        f"{device.platform} ({device.device_kind}); wall {(time.time() - start) / 60:.1f} min "
        f"(cached runs and evaluations count as 0)\n"
    )
    print(format_table(stats, variants))
    for name, runs in curves.items():
        points = ", ".join(
            f"{s}: {sum(r[i][1] for r in runs) / len(runs):.3f}" for i, (s, _) in enumerate(runs[0])
        )
        print(f"sync vs step, {name}: {points}")
    print(f"\n{_WORKDIR.value}/results.json, {png}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
