"""LoRA adapters on chosen Dense kernels, through qwix's LoRA provider, and the parameter-tree
algebra of a LoRA run: which leaves train, the split into trained and frozen, the merge.

qwix intercepts each targeted module's `dot_general`: beside `kernel` [.., in, out] it creates
`kernel_lora_a` [.., in, r] (he-uniform) and `kernel_lora_b` [.., r, out] (zeros) with the
kernel's logical axis names (A: its in-axis and None, B: None and its out-axis; under `nn.scan`
the stacked 'layers' axis leads), so they shard as the kernel does, and outputs
x W + alpha / r * dropout(x) A B. B = 0 at init: the adapted model computes what the base does.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from flax import traverse_util

from harmony_jax.errors import ConfigError

Params = Any
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """`config.lora` of a run, with the module paths its `targets` select in this model."""

    rank: int
    alpha: float
    targets: str
    train_also: str
    dropout: float
    module_paths: tuple[str, ...] = ()  # 'layers/video_block/self_attn/q': the DiT's modules

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, lora) -> LoraSpec | None:
        """The spec of `config.lora`, None when rank is 0 (a full run)."""
        if not lora.rank:
            return None
        return cls(
            int(lora.rank),
            float(lora.alpha),
            str(lora.targets),
            str(lora.train_also),
            float(lora.dropout),
        )


class _LoraProvider(qwix.LoraProvider):
    """qwix's LoRA with the layer's output dtype kept: qwix adds the float32 adapters' term to
    a bfloat16 x W, which would promote the block's output (and `nn.scan`'s carry) to float32."""

    def dot_general(
        self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw
    ):
        out = super().dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type, **kw
        )
        return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def adapt(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """`model` (the DiT) with qwix LoRA adapters on `spec.module_paths`."""
    provider = _LoraProvider(
        module_path="|".join(re.escape(p) for p in spec.module_paths),
        rank=spec.rank,
        alpha=spec.alpha,
        dropout=spec.dropout,
    )
    return qwix.apply_lora_to_model(model, provider)


def flat(tree: Params) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def unflat(leaves: dict[str, Any]) -> Params:
    return traverse_util.unflatten_dict(leaves, sep="/")


def is_adapter(path: str) -> bool:
    return path.endswith(ADAPTER_SUFFIXES)


def targeted(plain: Params, spec: LoraSpec) -> list[str]:
    """Paths ('dit/...kernel') of the plain model's leaves that `spec.targets` matches; a regex
    that matches nothing, or a leaf that is no DiT kernel, raises ConfigError naming the key."""
    pattern, leaves = re.compile(spec.targets), flat(plain)
    paths = [p for p in leaves if pattern.search(p)]
    if not paths:
        raise ConfigError(
            f"config.lora.targets={spec.targets!r} matches no parameter of the model "
            "(paths look like dit/layers/video_block/self_attn/q/kernel)"
        )
    for path in paths:  # [in, out], or [layers, in, out] stacked by nn.scan
        dense = 2 + path.startswith("dit/layers/")
        if not (path.startswith("dit/") and path.endswith("/kernel")) or (
            len(leaves[path].shape) != dense
        ):
            raise ConfigError(
                f"config.lora.targets={spec.targets!r} matches {path} "
                f"{tuple(leaves[path].shape)}, which is no Dense kernel of the DiT "
                "(adapters go on dit/.../kernel of x W layers)"
            )
    return paths


def trainable(path: str, spec: LoraSpec) -> bool:
    """Whether a leaf of the adapted model trains: an adapter, or what `train_also` names."""
    return is_adapter(path) or bool(spec.train_also and re.search(spec.train_also, path))


def split(params: Params, spec: LoraSpec) -> tuple[Params, Params]:
    """(trained, frozen): the adapted model's tree as two disjoint trees of the same nesting."""
    leaves = flat(params)
    train = {k: v for k, v in leaves.items() if trainable(k, spec)}
    return unflat(train), unflat({k: v for k, v in leaves.items() if k not in train})


def combine(frozen: Params | None, trained: Params) -> Params:
    """The one tree of `split`'s two (None: a full run's state holds no frozen part)."""
    if frozen is None:
        return trained
    return unflat({**flat(frozen), **flat(trained)})


def check_adapters(params: Params, spec: LoraSpec) -> None:
    """Every targeted kernel W [.., in, out] got A [.., in, r] and B [.., r, out] (what `merge`
    folds); a kernel qwix adapts differently (a convolution) raises ConfigError naming it."""
    leaves = flat(params)
    for module in spec.module_paths:
        kernel = leaves[f"dit/{module}/kernel"]
        a = leaves.get(f"dit/{module}/kernel_lora_a")
        b = leaves.get(f"dit/{module}/kernel_lora_b")
        *lead, fan_in, fan_out = kernel.shape
        want_a, want_b = (*lead, fan_in, spec.rank), (*lead, spec.rank, fan_out)
        if a is None or b is None or a.shape != want_a or b.shape != want_b:
            raise ConfigError(
                f"config.lora.targets={spec.targets!r} matches dit/{module}/kernel "
                f"{kernel.shape}, which is no Dense kernel qwix adapts as x W"
            )


def merge(params: Params, spec: LoraSpec) -> Params:
    """The plain model's tree: W + alpha/r * A @ B folded into each adapted kernel (in float32,
    cast back to W's dtype), the adapters dropped. Exact up to float rounding."""
    leaves = flat(params)
    out = {k: v for k, v in leaves.items() if not is_adapter(k)}
    for path in leaves:
        if not path.endswith("_lora_a"):
            continue
        kernel = path[: -len("_lora_a")]
        a, b = leaves[path], leaves[kernel + "_lora_b"]
        w = out[kernel]
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
        out[kernel] = (w.astype(jnp.float32) + spec.scale * delta).astype(w.dtype)
    return unflat(out)


def without_adapters(params: Params) -> Params:
    """The base model's part of an adapted model's tree (every leaf but A and B)."""
    return unflat({k: v for k, v in flat(params).items() if not is_adapter(k)})


def count(tree: Params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
