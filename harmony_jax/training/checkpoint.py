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

from harmony_jax.config_diff import first_difference, without


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameters do not have the shapes the config's model has."""


def _path(keys: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in keys)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape of every array (or array metadata) leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path(keys): tuple(leaf.shape) for keys, leaf in leaves}


def check_params(saved: Any, params: Any, where: str) -> None:
    """Raises CheckpointMismatchError naming the first parameter whose shape differs between
    `saved` (the checkpoint's metadata tree of its parameters) and `params` (the config's model,
    arrays or abstract): restoring would fail deep in orbax, or train another model."""
    saved, wanted = _shapes(saved), _shapes(params)
    for path in sorted(saved.keys() | wanted.keys()):
        got, want = saved.get(path, "absent"), wanted.get(path, "absent")
        if got != want:
            raise CheckpointMismatchError(
                f"{where}: parameter {path} is {got} in the checkpoint but {want} in the config; "
                f"it was trained with another model config (its own is saved beside it, in "
                f"config/metadata): use that config or another --workdir")


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
            item_names=("state", "config", "run"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def complete_steps(self) -> list[int]:
        """Steps fully on disk, read from the directory (orbax renames a step into place only
        once every process has written it), without asking the other processes."""
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json())),
            run=ocp.args.JsonSave(run_layout())))

    def check_resumable(self, step: int, config: ml_collections.ConfigDict) -> None:
        """Raises CheckpointMismatchError when this run is not the one that wrote `step`: another
        process count, or another value of a key that changes what is computed (keys that only
        say how often to log, save or sample, where data and caches live, or how long to train
        may change on a resume)."""
        where = self.directory / str(step)
        run_file = where / "run" / "metadata"
        if run_file.exists():  # written since multi-process runs are checked
            saved = json.loads(run_file.read_text())
            if saved["process_count"] != jax.process_count():
                raise CheckpointMismatchError(
                    f"{where} was written by a run of {saved['process_count']} processes; this "
                    f"one has {jax.process_count()}: restart it with {saved['process_count']}")
        saved_config = json.loads((where / "config" / "metadata").read_text())
        difference = first_difference(without(saved_config, RESUMABLE_CHANGES),
                                      without(json.loads(config.to_json()), RESUMABLE_CHANGES))
        if difference is not None:
            key, then, now = difference
            raise CheckpointMismatchError(
                f"{where} was written with {key}={then!r}; this run has {key}={now!r}: resume "
                f"with the run's own config (saved in config.json) or use another --workdir")

    def check_params(self, step: int, params: Any) -> None:
        """Raises CheckpointMismatchError if step's parameters do not fit `params`' shapes."""
        state_dir = self.directory / str(step) / "state"
        saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree["params"]
        check_params(saved, params, str(self.directory / str(step)))

    def restore(self, step: int, like_state: Any) -> Any:
        """The state at `step`, laid out like `like_state` (arrays or abstract, with shardings)."""
        self.check_params(step, like_state.params)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like_state))))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


# Config keys a resumed run may change: when to log, save and sample, where data and caches
# live, the length of the run, how processes wait for each other, the (re)layout on devices.
RESUMABLE_CHANGES = ("total_steps", "checkpoint_every", "keep_checkpoints", "log_every",
                     "sample_every", "num_sample_clips", "compile_cache_dir", "data.root",
                     "data.num_workers", "distributed", "init", "sample", "mesh", "axis_rules")


def run_layout() -> dict[str, int]:
    """What a checkpoint records of the processes that wrote it."""
    return dict(process_count=jax.process_count(), device_count=jax.device_count())


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
