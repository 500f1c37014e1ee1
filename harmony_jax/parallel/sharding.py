"""Logical axis names -> mesh shardings, and parameters created directly in their sharded layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from harmony_jax.parallel.mesh import AXES, mesh_axes


def axis_rules(config) -> tuple[tuple[str, Any], ...]:
    """`config.axis_rules` as the tuple-of-pairs linen expects, for the mesh `config.mesh` builds.

    Mesh axes that mesh lacks ('sequence' unless `mesh.sequence` is set) drop out of the rules, so
    one rule set serves every mesh: ('embed', ('fsdp', 'sequence')) reads ('embed', 'fsdp').
    """
    present = set(mesh_axes(config.mesh))

    def keep(name: str, axes: Any) -> Any:
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        unknown = [a for a in axes if a not in AXES]
        if unknown:
            raise ValueError(
                f"config.axis_rules: {name!r} -> {unknown} names no mesh axis of {AXES}"
            )
        axes = tuple(a for a in axes if a in present)
        return axes[0] if len(axes) == 1 else (axes or None)

    return tuple((name, keep(name, axes)) for name, axes in config.axis_rules)


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings of a tree of `nn.LogicallyPartitioned` (e.g. `eval_shape(model.init)`)."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any]:
    """Runs `init_fn(*args)` with every parameter born on its shard; returns (unboxed, shardings).

    The abstract pass (`jax.eval_shape`) reads the logical axis names, so no host ever holds a
    whole parameter of a model that does not fit on one device.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_shardings(abstract, mesh, rules)
        variables = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(variables), nn.meta.unbox(shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def process_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """(block, blocks): this process feeds rows [block * b, (block + 1) * b) of every global
    batch, b = batch_size / blocks, the rows its devices hold under `sharding`. Processes that
    share a block (a mesh axis crossing hosts that the batch is not split over, e.g. `sequence`)
    load the same rows."""
    rows = sorted(
        {
            index[0].indices(batch_size)[:2]
            for index in sharding.addressable_devices_indices_map((batch_size,)).values()
        }
    )
    start, stop = rows[0][0], rows[-1][1]
    size = stop - start
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:])) or batch_size % size or start % size:
        raise ValueError(
            f"this process's devices hold rows {rows} of the batch of {batch_size}:"
            f" not one contiguous block (the mesh's devices are not grouped by "
            f"process)"
        )
    return start // size, batch_size // size
