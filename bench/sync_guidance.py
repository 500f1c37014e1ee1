"""SyncCFG vs plain text CFG vs no guidance on a trained run, same seeds and prompts.

    python bench/sync_guidance.py --workdir runs/demo [--num_clips 8]

Prints one sync table per guidance (event F1, mean |offset|, AV offset for t2av, a2v and v2a,
each beside the same clips with the audio shuffled across clips) and a summary of the ratios
generated / shuffled, measured in this one run.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from harmony_jax.eval.heldout import evaluate_sync
from harmony_jax.eval.sync import sync_table
from harmony_jax.generation import MODES
from harmony_jax.inference import load_for_inference

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "A trained run (its latest checkpoint).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 8, "Held-out prompts per mode.")
GUIDANCES = ("syncfg", "cfg", "none")


def _mean_f1(clips) -> float:
    return float(np.nanmean([c["event_f1"] for c in clips]))


def main(argv):
    del argv
    system, params = load_for_inference(_WORKDIR.value)
    summary = []
    for i, guidance in enumerate(GUIDANCES):
        rows = evaluate_sync(system, params, _NUM_CLIPS.value, guidance=guidance, with_truth=i == 0)
        print(f"\n== guidance={guidance}\n{sync_table(rows)}")
        for mode in MODES:
            gen, shuf = _mean_f1(rows[f"{mode} generated"]), _mean_f1(rows[f"{mode} shuffled"])
            summary.append((guidance, mode, gen, shuf))
    print(f"\n{'guidance':<9} {'mode':<5} {'F1':>6} {'F1 shuffled':>12} {'ratio':>6}")
    for guidance, mode, gen, shuf in summary:
        ratio = gen / shuf if shuf > 0 else float("inf")
        print(f"{guidance:<9} {mode:<5} {gen:>6.3f} {shuf:>12.3f} {ratio:>6.2f}")


if __name__ == "__main__":
    app.run(main)
