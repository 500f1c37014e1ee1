"""The sounding-shapes demo: train, generate with SyncCFG, and measure synchronization.

    python -m harmony_jax.demo --workdir runs/demo [--config configs/demo.py] [--num_clips 32]

Trains `configs/demo.py` (resuming if WORKDIR holds a checkpoint), then generates clips for
held-out prompts in three modes and prints the sync table: event F1 and mean |offset| between
the bounces seen in the frames and the onsets heard in the audio, for generated clips, for
ground-truth clips, and for the same clips with the audio shuffled across clips (chance level).
Beside the table (WORKDIR/demo_sync.json) goes a contact sheet, WORKDIR/demo_sheet.png: frames
and spectrograms of a few clips per mode above the ground truth, bounces and onsets marked.
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from harmony_jax import quiet_logs
from harmony_jax.atomic import atomic_path
from harmony_jax.config_cli import parse_flags
from harmony_jax.data.sounding_shapes import SoundingShapes, captions
from harmony_jax.errors import reported_as_one_line
from harmony_jax.eval.contact_sheet import write_contact_sheet
from harmony_jax.eval.heldout import EVAL_SEED_OFFSET, evaluate_sync
from harmony_jax.eval.sync import sync_table, versus_shuffled
from harmony_jax.system import build_system
from harmony_jax.training.loop import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Run config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the run and the clips go.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 32, "Held-out prompts to generate per mode.")


@reported_as_one_line  # a bad config, workdir or disk: one line, no traceback
def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    start = time.time()
    state = train(config, workdir)
    trained = time.time() - start
    lead = jax.process_index() == 0  # every process samples (the model is sharded); one writes
    clips = {}
    rows = evaluate_sync(
        build_system(config),
        state.sampling_params,
        _NUM_CLIPS.value,
        out_dir=os.path.join(workdir, "demo_clips") if lead else None,
        keep=clips,
    )
    if not lead:
        return
    table = sync_table(rows)
    sheet = os.path.join(workdir, "demo_sheet.png")
    clips["ground truth"] = clips.pop("ground truth")  # last: the generated rows above it
    d = config.data
    write_contact_sheet(
        sheet, clips, d.fps, d.sample_rate, captions=_captions(config, 3), palette=tuple(d.colors)
    )
    print(
        f"\ntrained {config.total_steps} steps in {trained / 60:.1f} min; "
        f"total {(time.time() - start) / 60:.1f} min; clips in {workdir}/demo_clips, "
        f"contact sheet {sheet}\n"
    )
    print(f"{table}\n\n{versus_shuffled(rows)}")
    with (
        atomic_path(os.path.join(workdir, "demo_sync.json"), overwrite=True) as tmp,
        open(tmp, "w") as f,
    ):
        json.dump(rows, f, indent=1)


def _captions(config, count: int) -> list[str]:
    """The video captions of the first `count` held-out prompts (evaluate_sync's world)."""
    world = SoundingShapes.like(config.data, count, config.seed + EVAL_SEED_OFFSET)
    return [captions(world.scene(i))[0] for i in range(count)]


if __name__ == "__main__":
    quiet_logs.install()
    app.run(main, flags_parser=parse_flags)
