"""Converted parameter trees on disk: orbax checkpoints written all-or-nothing, read to the host.

A conversion writes into a hidden sibling of the destination and renames it into place only when
complete, so the destination is never half-written: it is absent, the old checkpoint, or the new.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util


def is_orbax_checkpoint(path: str | pathlib.Path) -> bool:
    """Whether `path` is a finished orbax checkpoint (a `convert` output), not upstream files."""
    return (pathlib.Path(path) / "_CHECKPOINT_METADATA").is_file()


def check_destination(dst: str | pathlib.Path, overwrite: bool) -> pathlib.Path:
    """The absolute local `dst`, refusing an existing one unless `overwrite`."""
    if "://" in str(dst):
        raise ValueError(
            f"--dst {dst}: write to a local directory, then copy it to the bucket "
            "(a bucket has no atomic rename)"
        )
    dst = pathlib.Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"--dst {dst} exists; pass --overwrite to replace it")
    return dst


def save_tree(tree: Any, dst: str | pathlib.Path, *, overwrite: bool = False) -> None:
    """Writes a pytree of host arrays as an orbax checkpoint at `dst`, atomically.

    Everything is written under a hidden sibling work directory (orbax's own temporaries too),
    which is removed whatever happens; an old `dst` is put back if the final rename fails.
    """
    dst = check_destination(dst, overwrite)
    work = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(work / "new", tree)
        if dst.exists():
            dst.rename(work / "old")
        try:
            (work / "new").rename(dst)
        except BaseException:
            if (work / "old").exists():
                (work / "old").rename(dst)
            raise
    finally:
        shutil.rmtree(work)


def saved_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{'a/b/c': shape} of a saved tree, from its metadata (no array is read)."""
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(epath.Path(path)).item_metadata.tree
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def restore_to_host(path: str, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a saved tree as host numpy arrays, flat by 'a/b/c' path, cast to `dtypes`.

    Host arrays can then be placed with any sharding (`jax.device_put`), whatever mesh wrote them.
    """
    args = traverse_util.unflatten_dict(
        {k: ocp.RestoreArgs(restore_type=np.ndarray, dtype=d) for k, d in dtypes.items()}, sep="/"
    )
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(
            epath.Path(path), args=ocp.args.PyTreeRestore(restore_args=args)
        )
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
