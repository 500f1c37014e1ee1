"""Convert a published checkpoint into an orbax checkpoint of our parameters:

    python -m harmony_jax.convert wan --src Wan2.2-TI2V-5B-Diffusers --dst ckpt/wan_video \
        [--config configs/harmony_5b.py] [--overwrite]

then train with `--config.init.video_from=ckpt/wan_video`;

    python -m harmony_jax.convert merge-lora --workdir RUN --dst DIR [--overwrite]

folds a LoRA run's adapters into its base (a run of plain weights). Each command is a module of this
package defining `convert_checkpoint(src, dst, config, *, overwrite)`; `--config` gives the model
the weights are converted for (its shapes are checked against the checkpoint).
"""

from __future__ import annotations

import importlib
import pathlib

from absl import app, flags
from ml_collections import config_flags

from harmony_jax import quiet_logs
from harmony_jax.config_check import check_config
from harmony_jax.config_cli import parse_flags
from harmony_jax.errors import FlagError, UserError, one_line, reported_as_one_line

_COMMANDS = {  # command -> module under harmony_jax.convert
    "wan": "wan",
    "wan-vae": "wan_vae",
    "umt5": "umt5",
    "mmaudio-vae": "mmaudio_vae",
    "bigvgan": "bigvgan",
    "f5-text": "f5_text",
    "merge-lora": "merge_lora",  # --workdir RUN instead of --src
}
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "harmony_5b.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(_DEFAULT_CONFIG),
    "Run config whose model the weights are converted for.",
    lock_config=True,
)
_SRC = flags.DEFINE_string("src", None, "Upstream checkpoint directory (or file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "merge-lora: the LoRA run to merge.")
_DST = flags.DEFINE_string("dst", None, "Orbax checkpoint directory to create.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --dst.")


@reported_as_one_line
def main(argv: list[str]) -> None:
    """Checks the command line, then converts; a checkpoint of another layout, a missing file or
    an absent torch is one line naming it (HARMONY_TRACEBACK=1 shows where it was found)."""
    usage = (
        f"usage: python -m harmony_jax.convert {{{'|'.join(_COMMANDS)}}} --src DIR --dst DIR; "
        "merge-lora: --workdir RUN instead of --src"
    )
    if len(argv) != 2 or argv[1] not in _COMMANDS:
        raise FlagError(f"{usage}; got arguments {argv[1:]}")
    src = ("workdir", _WORKDIR.value) if argv[1] == "merge-lora" else ("src", _SRC.value)
    for flag, value in (src, ("dst", _DST.value)):
        if not value:
            raise FlagError(f"--{flag} is required ({usage})")
    check_config(_CONFIG.value)
    module = importlib.import_module(f"harmony_jax.convert.{_COMMANDS[argv[1]]}")
    try:
        module.convert_checkpoint(src[1], _DST.value, _CONFIG.value, overwrite=_OVERWRITE.value)
    except (ValueError, ImportError) as e:  # what --src holds does not fit, or needs torch
        if isinstance(e, UserError):
            raise
        raise UserError(one_line(e)) from e


if __name__ == "__main__":
    quiet_logs.install()
    app.run(main, flags_parser=parse_flags)
