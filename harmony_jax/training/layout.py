"""The train state laid out on the mesh: every copy of the parameters (EMA, Adam's moments) sharded
as the parameters are.

Left to XLA's propagation, `jit(create_train_state)` may replicate the optimizer's moments: it does
for harmony_5b on a 64-way fsdp mesh (100 GiB of moments per device instead of 1.8). So the
layout is stated, not inferred.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh

from harmony_jax.parallel.sharding import replicated
from harmony_jax.training.step import TrainState, create_train_state


def train_state_shardings(
    state: TrainState, param_shardings: Any, mesh: Mesh, frozen_shardings: Any = None
) -> TrainState:
    """Shardings of `state` (arrays or abstract): every leaf whose key path ends in a parameter's
    path with that parameter's shape (its EMA, Adam's mu and nu, under any optax nesting or
    freeze mask) as that parameter; a LoRA run's frozen base as `frozen_shardings`; counters and
    the rest replicated."""
    rep = replicated(mesh)
    pairs = [(state.params, param_shardings), (state.frozen, frozen_shardings)]
    params = {
        tuple(path): (leaf.shape, sharding)
        for tree, shardings in pairs
        if tree is not None
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)
        )
    }

    def layout(path, leaf):
        for start in range(len(path)):
            shape, sharding = params.get(tuple(path[start:]), (None, None))
            if shape == leaf.shape:
                return sharding
        return rep

    return jax.tree_util.tree_map_with_path(layout, state)


def sharded_train_state(
    params: Any,
    param_shardings: Any,
    tx: optax.GradientTransformation,
    ema: bool,
    mesh: Mesh,
    frozen: Any = None,
    frozen_shardings: Any = None,
) -> TrainState:
    """`create_train_state(params, tx, ema, frozen)` laid out by `train_state_shardings`
    (parameters as `param_shardings`, e.g. from `sharded_init`, wherever `params` are now);
    `params` and `frozen` are donated, so they are not held twice."""
    create = lambda p, f: create_train_state(p, tx, ema, f)
    shardings = train_state_shardings(
        jax.eval_shape(create, params, frozen), param_shardings, mesh, frozen_shardings
    )
    with jax.set_mesh(mesh):
        return jax.jit(create, out_shardings=shardings, donate_argnums=(0, 1))(params, frozen)
