"""Upstream checkpoints as flat state dicts: lazy reads of (sharded) safetensors, and one check
that names every missing, unexpected and mis-shaped key at once (a wrong checkpoint should be
diagnosed in one run, not one key per run)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from safetensors import safe_open


class StateDictMismatchError(ValueError):
    """A checkpoint whose keys or shapes differ from the parameters it should fill."""


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """One tensor of a safetensors file: shape known up front, data read on `np.asarray`."""

    file: pathlib.Path
    key: str
    shape: tuple[int, ...]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # The flax reader handles bfloat16, which the numpy reader refuses; keep it on the host.
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            with safe_open(self.file, framework="flax") as f:
                x = np.asarray(f.get_tensor(self.key))
        return x if dtype is None else x.astype(dtype)


def read_safetensors(path: str | pathlib.Path, subfolder: str = "") -> dict[str, LazyTensor]:
    """Every tensor of a checkpoint, read lazily.

    `path` is a .safetensors file, a directory with a `*.safetensors.index.json` (sharded) or with
    one .safetensors file; a directory holding `subfolder` (a diffusers pipeline root, e.g.
    'transformer') resolves to that subfolder.
    """
    path = pathlib.Path(path)
    if subfolder and (path / subfolder).is_dir():
        path = path / subfolder
    if path.is_file():
        return _read_files([path])
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(
            f"{path}: several index files {[p.name for p in indexes]}; point at one checkpoint"
        )
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{indexes[0]} names shards that are missing: {absent}")
        state = _read_files(files)
        unlisted = sorted(state.keys() - weight_map.keys())
        if unlisted:
            raise ValueError(f"{indexes[0]}: the shards hold keys its weight_map lacks: {unlisted}")
        return state
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"{path}: expected a *.safetensors.index.json or exactly one "
            f".safetensors file, found {[f.name for f in files]}"
        )
    return _read_files(files)


def _read_files(files: list[pathlib.Path]) -> dict[str, LazyTensor]:
    state: dict[str, LazyTensor] = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for key in f.keys():
                if key in state:
                    raise ValueError(f"key {key} is in both {state[key].file} and {file}")
                state[key] = LazyTensor(file, key, tuple(f.get_slice(key).get_shape()))
    return state


def check_keys(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raises one `StateDictMismatchError` listing every missing, unexpected and mis-shaped key."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = sorted(
        k for k in expected.keys() & found.keys() if tuple(expected[k]) != tuple(found[k])
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{source} does not match the parameters it should fill:"]
    if missing:
        lines.append(f"  {len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected: {', '.join(unexpected)}")
    if misshaped:
        lines.append(
            f"  {len(misshaped)} mis-shaped: "
            + ", ".join(f"{k} {tuple(found[k])} (expected {tuple(expected[k])})" for k in misshaped)
        )
    raise StateDictMismatchError("\n".join(lines))


def shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a state dict of arrays, tensors or `LazyTensor`s, reading no data."""
    return {k: tuple(v.shape) for k, v in state.items()}
