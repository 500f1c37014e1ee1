"""Train a Harmony model: `python -m harmony_jax.train --config configs/demo.py --workdir DIR`.

Config overrides: `--config.optim.lr=3e-4 --config.total_steps=2000`. Rerunning the same command
resumes from the latest checkpoint in DIR.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from harmony_jax import quiet_logs
from harmony_jax.config_cli import parse_flags
from harmony_jax.errors import reported_as_one_line
from harmony_jax.training.loop import PeerLostError, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, samples, TensorBoard logs.")


@reported_as_one_line  # a bad config, data folder, workdir or disk: one line, no traceback
def main(argv):
    del argv
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except PeerLostError as e:  # no orderly shutdown: it would wait for the lost peer
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    quiet_logs.install()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
