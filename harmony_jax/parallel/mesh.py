"""The device mesh, built from `config.mesh` for any device count, one slice or many.

Axes, outermost (least traffic) first: 'data', 'fsdp', optionally 'sequence' (context
parallelism, present only when `mesh.sequence` is not 1), 'tensor'. `mesh.<axis>` sizes are per
slice (ICI); `mesh.dcn_data` / `mesh.dcn_fsdp` multiply them across slices (DCN). Only the data
and fsdp axes may cross the slow network: their traffic is one gradient reduce / parameter gather
per step, while sequence and tensor traffic sits inside every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from harmony_jax.errors import FlagError

AXES = ("data", "fsdp", "sequence", "tensor")
DCN_AXES = ("data", "fsdp")


def apply_mesh_flag(mesh_cfg, spec: str, flag: str = "--mesh") -> None:
    """Sets `mesh_cfg`'s sizes from a command line's 'data=1,fsdp=64' (in place); the error names
    `flag`, the key or the value at fault."""
    for item in spec.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in mesh_cfg:
            raise FlagError(f"{flag} {spec!r}: {key!r} is not one of {list(mesh_cfg)}")
        try:
            mesh_cfg[key] = int(value)
        except ValueError:
            raise FlagError(f"{flag} {spec!r}: {key}={value!r} is not an integer") from None


def mesh_axes(mesh_cfg) -> tuple[str, ...]:
    """The axis names of the mesh `mesh_cfg` describes ('sequence' only when it is not 1)."""
    return tuple(a for a in AXES if a != "sequence" or int(mesh_cfg.get("sequence", 1)) != 1)


def dcn_shape(mesh_cfg) -> dict[str, int]:
    """Slices along each mesh axis (`mesh.dcn_data`, `mesh.dcn_fsdp`; 1 elsewhere)."""
    sizes = {
        a: int(mesh_cfg.get(f"dcn_{a}", 1)) if a in DCN_AXES else 1 for a in mesh_axes(mesh_cfg)
    }
    for axis, size in sizes.items():
        if size < 1:
            raise ValueError(f"config.mesh.dcn_{axis}={size} must be >= 1")
    return sizes


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
    """Per-slice axis sizes with at most one -1 ("the rest") resolved; errors name the sizes.

    `num_devices` counts every device of every slice; each slice holds
    `num_devices / prod(mesh.dcn_*)` of them.
    """
    slices = math.prod(dcn_shape(mesh_cfg).values())
    if num_devices % slices:
        raise ValueError(
            f"config.mesh dcn sizes {dcn_shape(mesh_cfg)} ask for {slices} slices; "
            f"{num_devices} devices do not split into {slices} equal slices"
        )
    per_slice = num_devices // slices
    sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in mesh_axes(mesh_cfg)}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {sizes}")
    bad = {axis: size for axis, size in sizes.items() if size < 1 and size != -1}
    if bad:
        raise ValueError(f"config.mesh: axis sizes must be >= 1 or -1, got {bad}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if per_slice % fixed:
            raise ValueError(
                f"config.mesh {sizes}: {per_slice} devices are not divisible by "
                f"the fixed axes' product {fixed}"
            )
        sizes[free[0]] = per_slice // fixed
    if math.prod(sizes.values()) != per_slice:
        raise ValueError(
            f"config.mesh {sizes} needs {math.prod(sizes.values())} devices; "
            f"{per_slice} are available" + (" per slice" if slices > 1 else "")
        )
    return sizes


def device_grid(mesh_cfg, devices: Sequence[Any]) -> np.ndarray:
    """Devices arranged as the mesh (shape = per-slice size x slices, axis by axis).

    One slice: `mesh_utils.create_device_mesh` (topology-aware on TPU). Several:
    `create_hybrid_device_mesh`, grouping devices by `slice_index` (TPU multi-slice) or, where
    devices have none (GPU nodes), by process.
    """
    ici = resolve_mesh_shape(mesh_cfg, len(devices))
    dcn = dcn_shape(mesh_cfg)
    names = mesh_axes(mesh_cfg)
    within, across = [ici[a] for a in names], [dcn[a] for a in names]
    if math.prod(across) == 1:
        return mesh_utils.create_device_mesh(within, devices, allow_split_physical_axes=True)
    return mesh_utils.create_hybrid_device_mesh(
        within,
        across,
        devices,
        process_is_granule=not hasattr(devices[0], "slice_index"),
        allow_split_physical_axes=True,
    )


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The run's mesh with Auto axis types, so linen's logical-axis rules drive the layout."""
    devices = list(jax.devices() if devices is None else devices)
    names = mesh_axes(mesh_cfg)
    return Mesh(device_grid(mesh_cfg, devices), names, axis_types=(AxisType.Auto,) * len(names))
