"""Orbax checkpoints of the train state, with the run config saved beside every step.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`; orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save never shadows a good one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs with the live shardings: restore lands each array on its shard."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


class Checkpointer:
    """Async, keep-N checkpointing of (train state, config) in `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "config"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json()))))

    def restore(self, step: int, like_state: Any) -> Any:
        """The state at `step`, laid out like `like_state` (arrays or abstract, with shardings)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like_state))))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def read_config(path: str) -> tuple[ml_collections.ConfigDict, Optional[epath.Path]]:
    """(run config, checkpoint step dir) from a workdir (latest step) or a step directory."""
    path = epath.Path(path).absolute()
    step_dir = None
    if (path / "config").exists():  # a checkpoint step directory
        step_dir = path
    elif (path / "checkpoints").exists():
        steps = sorted((int(p.name) for p in (path / "checkpoints").iterdir()
                        if p.name.isdigit()), reverse=True)
        if steps:
            step_dir = path / "checkpoints" / str(steps[0])
    config_file = step_dir / "config" / "metadata" if step_dir else path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: no checkpoint with a saved config and no config.json")
    return ml_collections.ConfigDict(json.loads(config_file.read_text())), step_dir


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """`workdir/config.json`, atomically (temporary name + rename)."""
    path = epath.Path(workdir) / "config.json"
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_text(config.to_json(indent=2))
    tmp.replace(path)
