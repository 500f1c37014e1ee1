"""`python -m harmony_jax.convert merge-lora --workdir RUN --dst DIR`: a LoRA run's adapters
folded into its base, written as a run of plain weights.

DIR is a workdir (config.json and checkpoints/<step>/ with the merged parameters, the run's
config with `lora.rank=0`), so `load_for_inference`, `sample --workdir DIR` and another run's
`init.base_from=DIR` read it as any run; it needs the base no longer. It is written under a
hidden sibling and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil

from etils import epath

from harmony_jax.errors import ConfigError
from harmony_jax.inference import load_for_inference
from harmony_jax.training.checkpoint import Checkpointer, read_config, write_config
from harmony_jax.weights.store import check_destination


def merge_run(workdir: str, dst: str, *, overwrite: bool = False) -> epath.Path:
    """Writes the merged weights of `workdir`'s newest step (a LoRA run) to `dst`; returns the
    step directory written."""
    config, step_dir = read_config(workdir)
    if step_dir is None:
        raise FileNotFoundError(f"--workdir {workdir}: no checkpoint to merge; train first")
    if not config.lora.rank:
        raise ConfigError(
            f"--workdir {workdir} is no LoRA run (config.lora.rank=0): its weights are plain"
        )
    out = check_destination(dst, overwrite)
    _, params = load_for_inference(step_dir, dtype="float32")  # base hash checked, merged
    config.lora.rank, config.init.base_from = 0, ""
    work = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        checkpointer = Checkpointer(str(work / "new"), keep=1, async_save=False)
        checkpointer.save(int(step_dir.name), {"params": params}, config)
        checkpointer.wait()
        checkpointer.close()
        write_config(str(work / "new"), config)
        if out.exists():
            out.rename(work / "old")
        try:
            (work / "new").rename(out)
        except BaseException:
            if (work / "old").exists():
                (work / "old").rename(out)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return epath.Path(out) / "checkpoints" / step_dir.name


def convert_checkpoint(src: str, dst: str, config, *, overwrite: bool = False) -> None:
    """The `convert` command's contract: `src` is the LoRA run's workdir (`--workdir`)."""
    del config  # the run's own config is used
    merge_run(src, dst, overwrite=overwrite)
