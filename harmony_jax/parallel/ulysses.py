"""Ulysses context parallelism (Jacobs et al. 2023, DeepSpeed-Ulysses) for long self-attention.

Activations arrive split along the sequence over a mesh axis of S devices. One all-to-all per
tensor regroups q, k, v so each device holds the whole sequence for 1/S of the heads; any
attention kernel then runs locally, unchanged, and a last all-to-all restores the sequence split.
Per layer that is four all-to-alls moving 1/S of each tensor off every device, so the traffic
per device shrinks as S grows, and no [L, L] score block ever spans devices.

It is on where the logical axis 'act_length' maps to a mesh axis of more than one device
(`config.mesh.sequence` > 1 with the default rules) and the sequence length and head count both
divide by that size; elsewhere (short audio sequences, a 1-device axis) attention stays plain
and the partitioner handles whatever layout it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

Kernel = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def sequence_axis(length: int, heads: int) -> str | None:
    """The mesh axis to run Ulysses over for this attention, or None for plain attention.

    Read at trace time from the logical-axis rules and the mesh in context (`jax.set_mesh`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axis = nn.logical_to_mesh_axes(("act_length",))[0]
    if axis is None:
        return None
    if not isinstance(axis, str):
        raise ValueError(
            f"config.axis_rules maps 'act_length' to {axis}; sequence parallelism "
            "needs it on a single mesh axis"
        )
    size = mesh.shape.get(axis, 1)
    if size == 1 or length % size or heads % size:
        return None
    return axis


def ulysses_attention(
    kernel: Kernel, q: jax.Array, k: jax.Array, v: jax.Array, axis: str
) -> jax.Array:
    """`kernel(q, k, v)` for q/k/v [B, L, N, Hd] split along L over `axis`; same layout out.

    Only `axis` is manual inside: batch and head splits over the other mesh axes stay with the
    partitioner. `kernel` is any attention over [B, L, N, Hd] (the model's
    `dot_product_attention` with its configured implementation).
    """

    def local(q, k, v):  # [B, L/S, N, Hd] each
        to_heads = lambda t: jax.lax.all_to_all(
            t, axis, split_axis=2, concat_axis=1, tiled=True
        )  # [B, L, N/S, Hd]
        out = kernel(to_heads(q), to_heads(k), to_heads(v))  # [B, L, N/S, Hd]
        return jax.lax.all_to_all(
            out, axis, split_axis=1, concat_axis=2, tiled=True
        )  # [B, L/S, N, Hd]

    spec = P(None, axis, None, None)
    # check_vma=False: any kernel may run inside, e.g. one whose loop carries start as constants
    return jax.shard_map(
        local, in_specs=(spec, spec, spec), out_specs=spec, axis_names={axis}, check_vma=False
    )(q, k, v)
