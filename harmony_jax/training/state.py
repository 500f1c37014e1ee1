"""The train state of a run, assembled once for everything that needs one: `training.loop` (real
arrays), `plan` (abstract: shapes and shardings only) and the train-step benchmark.

Parameters are born on their shards (`parallel.sharding.sharded_init`), the optimizer is the
run's (`training.optim`), and every copy of the parameters (EMA, Adam's moments) is laid out as
the parameters are (`training.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from harmony_jax.model import lora
from harmony_jax.parallel.sharding import logical_shardings, sharded_init
from harmony_jax.system import System
from harmony_jax.training.layout import sharded_train_state, train_state_shardings
from harmony_jax.training.optim import make_optimizer
from harmony_jax.training.step import TrainState, create_train_state


def _with_shardings(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def make_train_state(
    system: System,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    rules,
    *,
    abstract: bool = False,
    imported: Callable[[Any], Any] | None = None,
    base: Callable[[Any], Any] | None = None,
) -> tuple[optax.GradientTransformation, TrainState]:
    """(optimizer, train state) of `system` on `mesh`: parameters initialised from
    `config.seed` on the inputs `system.example_batch` describes (media or latents).

    `abstract`: the state as sharded `jax.ShapeDtypeStruct`s, nothing allocated (what `plan`
    compiles against). `imported`: params -> params applied before the optimizer is made (a
    fresh run's imported towers); not with `abstract`. A LoRA system (`training.lora.with_lora`)
    trains its adapters (and `lora.train_also`) over a frozen base: `base` maps the plain
    model's sharded abstract parameters to the base's arrays (not with `abstract`).
    """
    if system.lora is not None:
        return _lora_train_state(system, config, mesh, rules, abstract, base)
    example = system.example_batch(1)
    ema = config.optim.ema_decay > 0
    if abstract:
        if imported is not None:
            raise ValueError("make_train_state: `imported` needs real parameters, not abstract")
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            boxed = jax.eval_shape(system.init, jax.random.key(config.seed), example)
            shardings = logical_shardings(boxed, mesh, rules)
        # unboxed outside the mesh: inside, unboxing constrains (and so needs real arrays)
        param_shardings = nn.meta.unbox(shardings)
        params = _with_shardings(nn.meta.unbox(boxed), param_shardings)
        tx = make_optimizer(config.optim, params, config.total_steps)
        state = jax.eval_shape(lambda p: create_train_state(p, tx, ema), params)
        return tx, _with_shardings(state, train_state_shardings(state, param_shardings, mesh))
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
    params, param_shardings = sharded_init(
        lambda rng: system.init(rng, zeros()), mesh, rules, jax.random.key(config.seed)
    )
    if imported is not None:
        params = imported(params)
    tx = make_optimizer(config.optim, params, config.total_steps)
    # Adam's moments and the EMA laid out as the parameters (XLA alone may replicate them);
    # `params` are donated, so they are not held twice.
    return tx, sharded_train_state(params, param_shardings, tx, ema, mesh)


def _lora_train_state(system, config, mesh, rules, abstract, base):
    """The state of a LoRA run: `params` the trained leaves (adapters with their init, and the
    base's `train_also` leaves), `frozen` the rest of the base; optimizer and EMA of the trained
    leaves only."""
    spec, key, example = system.lora, jax.random.key(config.seed), system.example_batch(1)
    ema = config.optim.ema_decay > 0
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(system.init, key, example)
        shardings = nn.meta.unbox(logical_shardings(boxed, mesh, rules))
    full = _with_shardings(nn.meta.unbox(boxed), shardings)
    lora.check_adapters(full, spec)
    trained_sh, frozen_sh = lora.split(shardings, spec)
    store = jnp.dtype(config.lora.base_dtype)  # the frozen base as stored
    stored = lambda dtype: store if jnp.issubdtype(dtype, jnp.floating) else dtype
    if abstract:
        trained, frozen = lora.split(full, spec)
        frozen = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, stored(s.dtype), sharding=s.sharding), frozen
        )
        tx = make_optimizer(config.optim, trained, config.total_steps)
        create = lambda p, f: create_train_state(p, tx, ema, f)
        state = jax.eval_shape(create, trained, frozen)
        layout = train_state_shardings(state, trained_sh, mesh, frozen_sh)
        return tx, _with_shardings(state, layout)
    if base is None:
        raise ValueError("make_train_state: a LoRA system needs its `base`")
    adapters_only = lambda tree: {
        k: v for k, v in lora.flat(nn.meta.unbox(tree)).items() if lora.is_adapter(k)
    }
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # only the adapters leave the jit: the base's own init is dead code there
        adapters = jax.jit(
            lambda rng: adapters_only(system.init(rng, zeros())),
            out_shardings=adapters_only(shardings),
        )(key)
    params = lora.combine(base(lora.without_adapters(full)), lora.unflat(adapters))
    trained, frozen = lora.split(params, spec)
    tx = make_optimizer(config.optim, trained, config.total_steps)
    del params
    leaves = lora.flat(frozen)
    del frozen
    for path in list(leaves):  # leaf by leaf: a float32 leaf is freed once cast
        leaves[path] = leaves[path].astype(stored(leaves[path].dtype))
    frozen = lora.unflat(leaves)
    del leaves
    return tx, sharded_train_state(trained, trained_sh, tx, ema, mesh, frozen, frozen_sh)
