"""Two-stage training on this machine: encode clips/s, and the train step fed latent records
against the same step fed media, as a ratio measured in one run.

    python bench/encode.py [--config configs/demo.py] [--quick] [--num_clips 32] [--steps 5] \
        [--workdir DIR] [--config.x=...]

Writes `--num_clips` sounding-shapes clips as a clip folder (real mp4 files), encodes it with
the config's codecs (`harmony_jax.encode`), and times the config's train step from latents and
from media (codec encoders inside the step) alike. `--quick`: a tiny model and clip
(`harmony_jax.perf.train_step.quick_config`) for a CPU in seconds.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from harmony_jax.config_cli import parse_flags
from harmony_jax.perf import encode as bench
from harmony_jax.perf.train_step import quick_config

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Codecs, clip geometry, model.")
_QUICK = flags.DEFINE_bool("quick", False, "A tiny model and clip instead of --config.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 32, "Clips written and encoded.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per input kind (after 1 warmup).")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where the clips and records go (default: a temporary directory, removed after).",
)


def main(argv):
    del argv
    config = quick_config() if _QUICK.value else _CONFIG.value
    with tempfile.TemporaryDirectory() as tmp:
        root = _WORKDIR.value or tmp
        src = bench.write_clip_folder(config, os.path.join(root, "clips"), _NUM_CLIPS.value)
        encode_rows = bench.measure_encode(config, src, os.path.join(root, "latents"))
        step_rows = bench.measure_steps(config, steps=_STEPS.value)
    print(bench.describe(config))
    print(bench.encode_table(encode_rows))
    print()
    print(bench.step_table(step_rows))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
