"""Convert a published checkpoint into an orbax checkpoint of our parameters:

    python -m harmony_jax.convert wan --src Wan2.2-TI2V-5B-Diffusers --dst ckpt/wan_video \
        [--config configs/harmony_5b.py] [--overwrite]

then train with `--config.init.video_from=ckpt/wan_video`. Each command is a module of this
package defining `convert_checkpoint(src, dst, config, *, overwrite)`; `--config` gives the model
the weights are converted for (its shapes are checked against the checkpoint).
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_COMMANDS = {  # command -> module under harmony_jax.convert
    "wan": "wan",
    "wan-vae": "wan_vae",
    "umt5": "umt5",
    "mmaudio-vae": "mmaudio_vae",
    "bigvgan": "bigvgan",
    "f5-text": "f5_text",
}
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "harmony_5b.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_DEFAULT_CONFIG), "Run config whose model the weights are converted for.",
    lock_config=True)
_SRC = flags.DEFINE_string("src", None, "Upstream checkpoint directory (or file).")
_DST = flags.DEFINE_string("dst", None, "Orbax checkpoint directory to create.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --dst.")


def main(argv: list[str]) -> None:
    usage = f"usage: python -m harmony_jax.convert {{{'|'.join(_COMMANDS)}}} --src DIR --dst DIR"
    if len(argv) != 2 or argv[1] not in _COMMANDS:
        raise app.UsageError(f"{usage}; got arguments {argv[1:]}")
    module = importlib.import_module(f"harmony_jax.convert.{_COMMANDS[argv[1]]}")
    try:
        module.convert_checkpoint(_SRC.value, _DST.value, _CONFIG.value,
                                  overwrite=_OVERWRITE.value)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")  # the source, --dst or --config is at fault: no traceback


if __name__ == "__main__":
    flags.mark_flags_as_required(["src", "dst"])
    app.run(main)
