"""A device mesh ('data', 'fsdp', 'tensor') built from `config.mesh` for any device count."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
    """Axis sizes with at most one -1 ("the rest") resolved; errors name the offending sizes."""
    sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"config.mesh {sizes}: {num_devices} devices are not divisible by "
                             f"the fixed axes' product {fixed}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices; "
                         f"{num_devices} are available")
    return sizes


def make_mesh(mesh_cfg, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The run's mesh with Auto axis types, so linen's logical-axis rules drive the layout."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                             devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), AXES,
                axis_types=(AxisType.Auto,) * len(AXES))
