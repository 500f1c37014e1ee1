"""What upstream checkpoints hold besides safetensors: PyTorch pickles (the original Wan
releases ship `Wan2.2_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`) and the `config.json` that
says which architecture a diffusers / transformers folder holds."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclasses.dataclass(frozen=True)
class TorchTensor:
    """One tensor of a torch checkpoint: `shape` up front, data on `np.asarray` (bfloat16 too)."""

    tensor: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        import torch

        t = self.tensor.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits
            x = t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            x = t.numpy()
        return x if dtype is None else x.astype(dtype)


def read_pth(file: str | pathlib.Path, entry: str = "") -> dict[str, TorchTensor]:
    """The state dict of a PyTorch pickle, or the one under its key `entry` (BigVGAN's
    'generator', F5-TTS's 'ema_model_state_dict'), memory-mapped (tensors only: `weights_only`)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{file} is a PyTorch pickle: reading it needs torch "
            "(pip install torch), or convert it to safetensors first"
        ) from e
    state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    if entry:
        if not isinstance(state, Mapping) or not isinstance(state.get(entry), Mapping):
            found = sorted(state)[:8] if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{file} has no state dict under {entry!r}; it holds {found}")
        state = state[entry]
    if not isinstance(state, Mapping):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    return {k: TorchTensor(v) for k, v in state.items()}


def read_config(folder: pathlib.Path) -> dict[str, Any] | None:
    """`folder/config.json` as a dict, or None when there is none."""
    file = folder / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def check_config(found: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Raises one ValueError naming every field of `expected` that `found` lacks or differs in
    (shapes cannot show e.g. a position-bias distance or a norm epsilon)."""
    wrong = [
        f"{k}={found.get(k)!r} (expected {v!r})" for k, v in expected.items() if found.get(k) != v
    ]
    if wrong:
        raise ValueError(f"{source} describes another architecture: {', '.join(wrong)}")


def checkpoint_file(src: str | pathlib.Path, what: str, preferred: str = "") -> pathlib.Path:
    """The checkpoint file `src` names: the file itself, or in a folder `preferred` if present,
    else its only .safetensors / torch file; anything else is an error naming what was found."""
    src = pathlib.Path(src)
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such {what} checkpoint file or directory")
    if preferred and (src / preferred).is_file():
        return src / preferred
    files = sorted(p for p in src.iterdir() if p.suffix in (".safetensors", *PTH_SUFFIXES))
    if len(files) != 1:
        wanted = f"{preferred} or exactly one" if preferred else "exactly one"
        raise FileNotFoundError(
            f"{src}: expected {wanted} {what} checkpoint file "
            f"(.safetensors / .pt), found {[f.name for f in files]}"
        )
    return files[0]
