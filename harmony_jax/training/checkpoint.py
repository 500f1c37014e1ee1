"""Orbax checkpoints of the train state, with the run config saved beside every step.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`; orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save never shadows a good one. A save
that fails (a full disk) stops the run naming the last good step; a step that cannot be read
(truncated, corrupt) is named with the file at fault, and the newest intact step is used instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from harmony_jax.config_check import check_config
from harmony_jax.config_diff import first_difference, without
from harmony_jax.defaults import base_config
from harmony_jax.errors import CheckpointError, ConfigError, DiskError, one_line

T = TypeVar("T")
DAMAGED_PREFIX = "damaged-"  # a step that cannot be read is moved to checkpoints/damaged-<step>
# what reading a damaged step raises (maybe wrapped): tensorstore's ValueError, a JSON error,
# a missing file
DAMAGE_ERRORS = (ValueError, OSError, KeyError)
_JSON_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/_sharding", "config/metadata")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's parameters do not have the shapes the config's model has."""


def _path(keys: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


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
                f"config/metadata): use that config or another --workdir"
            )


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs with the live shardings: restore lands each array on its shard."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def steps_in(directory: epath.Path) -> list[int]:
    """The finished steps in a checkpoints directory, newest first."""
    if not directory.exists():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def damage(error: BaseException) -> BaseException | None:
    """The error in `error`'s chain that says a checkpoint cannot be read (orbax wraps
    tensorstore's ValueError in a bare Exception), or None: then it is a bug, not damage."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DAMAGE_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def damaged_file(step_dir: epath.Path, error: BaseException) -> str:
    """The file of `step_dir` that `error` (raised reading it) points at: the one tensorstore
    names, else the first metadata file that is missing or no JSON, else the first empty file
    (what a disk that filled mid-write leaves), else the database or step directory."""
    named = re.findall(r'local file "([^"]+)"', str(error))
    files = [f for f in named if not f.endswith("/")]
    if files:
        return files[-1]
    filename = getattr(error, "filename", None)
    if filename:
        return str(filename)
    for name in _JSON_FILES:
        file = step_dir / name
        try:
            json.loads(file.read_text())
        except (OSError, ValueError):
            return str(file)
    for root, _, names in os.walk(step_dir):
        for name in sorted(names):
            if os.path.getsize(os.path.join(root, name)) == 0:
                return os.path.join(root, name)
    return named[-1] if named else str(step_dir)


def newest_intact(
    directory: epath.Path, load: Callable[[int], T], *, set_aside: bool = False
) -> tuple[int, T] | None:
    """(step, load(step)) for the newest step `load` can read; None without any step.

    A damaged step is named (which file) in a warning and the next older one is tried. With
    `set_aside`, once an intact step is found the damaged newer ones are moved to
    `damaged-<step>` by process 0 (nothing is deleted), so a resumed run can save those steps
    again.
    CheckpointMismatchError (another model) is raised, not skipped. With no intact step,
    CheckpointError lists every damaged one and nothing is moved."""
    damaged = []
    for step in steps_in(directory):
        try:
            found = step, load(step)
        except CheckpointMismatchError:
            raise
        except Exception as error:
            e = damage(error)
            if e is None:
                raise
            file, reason = damaged_file(directory / str(step), e), one_line(e)
            what = reason if reason.startswith(file) else f"{file}: {reason}"
            damaged.append((step, f"step {step} ({what[:300]})"))
            logging.warning(
                "checkpoint step %d is damaged: %s; trying the previous step", step, what[:600]
            )
            continue
        for bad, _ in damaged if set_aside and jax.process_index() == 0 else ():
            (directory / str(bad)).rename(directory / f"{DAMAGED_PREFIX}{bad}")
            logging.warning(
                "moved damaged %s to %s%d; resuming from step %d",
                directory / str(bad),
                DAMAGED_PREFIX,
                bad,
                step,
            )
        return found
    if damaged:
        raise CheckpointError(
            f"{directory}: no intact checkpoint; damaged: {'; '.join(text for _, text in damaged)}"
        )
    return None


def _saved(state: Any) -> Any:
    """What a checkpoint holds of a train state: its fields but a LoRA run's frozen base, which
    is referenced (`run/metadata`'s lora_base: path and hash), never copied. A dict of them:
    the layout of checkpoints written before the field existed, which so still resume."""
    if not dataclasses.is_dataclass(state):
        return state
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "frozen"}


def state_bytes(state: Any) -> int:
    """Bytes one checkpoint of `state` takes (arrays or ShapeDtypeStructs: shapes only)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


class Checkpointer:
    """Async, keep-N checkpointing of (train state, config) in `workdir/checkpoints`."""

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 3,
        async_save: bool = True,
        base: dict[str, str] | None = None,
    ):
        self.base = base  # a LoRA run's `lora_base` record, saved in every step's run item
        self.directory = epath.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            item_names=("state", "config", "run"),
        )
        self._saving: int | None = None  # the step whose save may still be running
        self._broken = False  # a save failed (and was reported)
        self._good: int | None = self._manager.latest_step()  # the newest complete save

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def check_resumable(self, step: int, config: ml_collections.ConfigDict) -> None:
        """Raises CheckpointMismatchError when this run is not the one that wrote `step`: another
        process count, or another value of a key that changes what is computed (keys that only
        say how often to log, save or sample, where data and caches live, or how long to train
        may change on a resume)."""
        where = self.directory / str(step)
        try:
            run_file = where / "run" / "metadata"
            saved = json.loads(run_file.read_text()) if run_file.exists() else None
            # merged onto today's defaults: a key added since (lora) reads as its default
            saved_config = json.loads(read_config_file(where / "config" / "metadata").to_json())
        except DAMAGE_ERRORS:  # a damaged step: set aside when the state is restored
            return
        if saved is not None:  # recorded since multi-process runs are checked
            if saved["process_count"] != jax.process_count():
                raise CheckpointMismatchError(
                    f"{where} was written by a run of {saved['process_count']} processes; this "
                    f"one has {jax.process_count()}: restart it with {saved['process_count']}"
                )
        difference = first_difference(
            without(saved_config, RESUMABLE_CHANGES),
            without(json.loads(config.to_json()), RESUMABLE_CHANGES),
        )
        if difference is not None:
            key, then, now = difference
            raise CheckpointMismatchError(
                f"{where} was written with {key}={then!r}; this run has {key}={now!r}: resume "
                f"with the run's own config (saved in config.json) or use another --workdir"
            )

    def check_space(self, state: Any) -> None:
        """Raises DiskError, before training, if the disk cannot hold one more
        checkpoint of `state` (local workdirs; a bucket is not measured)."""
        if "://" in str(self.directory):
            return
        need, free = state_bytes(_saved(state)), shutil.disk_usage(self.directory).free
        if free < need:
            raise DiskError(
                f"{self.directory}: {free / 2**20:.1f} MiB free, a checkpoint "
                f"needs {need / 2**20:.1f} MiB; free some space or use another "
                f"--workdir"
            )

    def _failed(self, step: int, error: BaseException) -> DiskError:
        self._broken = True
        good = (
            f"the last good checkpoint is step {self._good} "
            f"({self.directory / str(self._good)}), intact"
            if self._good is not None
            else "no checkpoint was saved before"
        )
        return DiskError(
            f"saving step {step} to {self.directory} failed "
            f"({one_line(error)[:300]}); the run stopped; {good}"
        )

    def check_for_errors(self) -> None:
        """Raises DiskError at once if the last (async) save failed; a finished one
        becomes the last good step."""
        if self._saving is None:
            return
        try:
            self._manager.check_for_errors()
        except Exception as e:
            step, self._saving = self._saving, None
            raise self._failed(step, e) from e
        if not self._manager.is_saving_in_progress():
            self._good, self._saving = self._saving, None

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        """Starts saving `step`; a failure of this or the previous save raises DiskError
        naming the last good step (the failed step's temporary directory never shadows it)."""
        self.check_for_errors()
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_saved(state)),
                    config=ocp.args.JsonSave(json.loads(config.to_json())),
                    run=ocp.args.JsonSave(run_layout(self.base)),
                ),
            )
        except Exception as e:
            self._saving = None
            raise self._failed(step, e) from e
        if self._saving is not None:  # save() waited for the previous one: it is complete
            self._good = self._saving
        self._saving = step

    def check_params(self, step: int, params: Any) -> None:
        """Raises CheckpointMismatchError if step's parameters do not fit `params`' shapes."""
        state_dir = self.directory / str(step) / "state"
        saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree["params"]
        check_params(saved, params, str(self.directory / str(step)))

    def restore(self, step: int, like_state: Any) -> Any:
        """The state at `step`, laid out like `like_state` (arrays or abstract, with shardings);
        a LoRA run's frozen base is `like_state`'s own."""
        self.check_params(step, like_state.params)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(_saved(like_state)))),
        )["state"]
        return like_state.replace(**restored) if dataclasses.is_dataclass(like_state) else restored

    def restore_newest_intact(self, like_state: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest step that reads back, damaged newer ones set aside with
        a warning; None in a fresh workdir."""
        found = newest_intact(
            self.directory, lambda step: self.restore(step, like_state), set_aside=True
        )
        self._manager.reload()
        self._good = self._manager.latest_step()
        return found

    def wait(self) -> None:
        """Waits for a pending save; its failure raises DiskError (once: after a reported
        failure the writer's later errors are only logged)."""
        try:
            self._manager.wait_until_finished()
            self.check_for_errors()
        except Exception as e:
            if self._broken:
                logging.warning("after the failed save: %s", one_line(e))
                return
            step, self._saving = self._saving, None
            raise self._failed(step, e) from e

    def close(self) -> None:
        self._manager.close()


# Config keys a resumed run may change: when to log, save and sample, where data and caches
# live, the length of the run, how processes wait for each other, the (re)layout on devices.
RESUMABLE_CHANGES = (
    "total_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "sample_every",
    "num_sample_clips",
    "compile_cache_dir",
    "data.root",
    "data.num_workers",
    "distributed",
    "init",
    "sample",
    "mesh",
    "axis_rules",
)


def run_layout(base: dict[str, str] | None = None) -> dict[str, Any]:
    """What a checkpoint records of the processes that wrote it (and a LoRA run's base)."""
    run = dict(process_count=jax.process_count(), device_count=jax.device_count())
    return run if base is None else dict(run, lora_base=base)


def read_run(step_dir: epath.Path) -> dict[str, Any]:
    """A step's run record (`run_layout`); {} for a step saved before it was recorded."""
    file = epath.Path(step_dir) / "run" / "metadata"
    return json.loads(file.read_text()) if file.exists() else {}


def restore_params(step_dir: epath.Path, abstract: Any) -> tuple[str, Any]:
    """('ema_params' | 'params', the tree) of a step: its EMA where the run kept one (averaged
    weights are the ones to sample or build on), read straight into `abstract`'s shardings and
    dtypes (each array into its shards, cast as read); no optimizer state is read. Shapes are
    checked first (CheckpointMismatchError names the parameter)."""
    state_dir = epath.Path(step_dir) / "state"
    saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree  # no array is read
    key = "ema_params" if saved.get("ema_params") else "params"
    check_params(saved[key], abstract, str(step_dir))  # the code's model may have changed since
    item = {key: abstract}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    return key, restored[key]


def read_config(path: str) -> tuple[ml_collections.ConfigDict, epath.Path | None]:
    """(run config, checkpoint step dir) from a workdir (latest step) or a step directory."""
    path = epath.Path(path).absolute()
    step_dir = None
    if (path / "config").exists():  # a checkpoint step directory
        step_dir = path
    elif (path / "checkpoints").exists():
        steps = sorted(
            (int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit()),
            reverse=True,
        )
        if steps:
            step_dir = path / "checkpoints" / str(steps[0])
    config_file = step_dir / "config" / "metadata" if step_dir else path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: no checkpoint with a saved config and no config.json")
    return read_config_file(config_file), step_dir


def read_config_file(file: epath.Path) -> ml_collections.ConfigDict:
    """A saved run config merged onto today's defaults, so a key added since the run was saved
    reads as its default and no reader needs a fallback, and checked as a config given on the
    command line is (`check_config`); one that is no JSON, holds a value of another type than
    its key's or one the code no longer accepts raises CheckpointError naming the file."""
    try:
        saved = json.loads(file.read_text())
        config = base_config()
        config.update(saved)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: damaged, not a JSON run config ({e})") from e
    try:
        check_config(config)
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from None
    return config


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """`workdir/config.json`, atomically (temporary name + rename)."""
    path = epath.Path(workdir) / "config.json"
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_text(config.to_json(indent=2))
    tmp.replace(path)
