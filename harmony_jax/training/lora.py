"""A LoRA run's system and its frozen base: where the base comes from, its hash, and the merged
weights of a LoRA checkpoint.

The base is `config.init.base_from` (another run's workdir or step: its EMA weights where it
kept them, merged if it is itself a LoRA run) or, when that is empty, this run's own init with
`init.video_from` / `init.transcript_from` imported. A checkpoint holds only the trained leaves
(adapters and `lora.train_also`); its run record names the base by path and by `fingerprint`, a
hash of the base's values that every resume, sample and merge checks before using it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from harmony_jax.errors import CheckpointError, ConfigError
from harmony_jax.model import lora
from harmony_jax.parallel.sharding import logical_shardings, sharded_init
from harmony_jax.system import System
from harmony_jax.training.checkpoint import (
    CheckpointMismatchError,
    newest_intact,
    read_config_file,
    read_run,
    restore_params,
)

Params = Any


class BaseMismatchError(CheckpointMismatchError):
    """A LoRA run's base is missing, or is not the one its adapters were trained on (raised,
    never taken for a damaged step)."""


def plain_abstract(system: System, mesh, rules) -> Params:
    """The plain (unadapted) model's parameters as ShapeDtypeStructs with their shardings."""
    plain = dataclasses.replace(system, lora=None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(plain.init, jax.random.key(0), plain.example_batch(1))
        shardings = nn.meta.unbox(logical_shardings(boxed, mesh, rules))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.meta.unbox(boxed),
        shardings,
    )


def lora_spec(config: ml_collections.ConfigDict, plain: Params) -> lora.LoraSpec | None:
    """`config.lora` with the DiT modules its targets select in `plain` (None: a full run);
    a regex that matches nothing raises ConfigError naming the key."""
    spec = lora.LoraSpec.from_config(config.lora)
    if spec is None:
        return None
    paths = lora.targeted(plain, spec)
    if spec.train_also and not any(re.search(spec.train_also, p) for p in lora.flat(plain)):
        raise ConfigError(
            f"config.lora.train_also={spec.train_also!r} matches no parameter of the model"
        )
    modules = tuple(p[len("dit/") : -len("/kernel")] for p in paths)
    return dataclasses.replace(spec, module_paths=modules)


def with_lora(system: System, config: ml_collections.ConfigDict) -> System:
    """`system` training adapters on the kernels `config.lora` names (unchanged when rank 0)."""
    if not config.lora.rank:
        return system
    plain = dataclasses.replace(system, lora=None)
    shapes = nn.meta.unbox(jax.eval_shape(plain.init, jax.random.key(0), plain.example_batch(1)))
    return dataclasses.replace(system, lora=lora_spec(config, shapes))


# ---- the hash of a base


def _leaf_sums(x: jax.Array) -> jax.Array:
    """Two position-weighted sums of a leaf's bits, mod 2^32: exact, so the same on any mesh."""
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    weight = jnp.ones(x.shape, jnp.uint32)
    for axis, prime in zip(range(x.ndim), (2654435761, 2246822519, 3266489917, 668265263)):
        weight = weight + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(prime)
    return jnp.stack([jnp.sum(bits * weight), jnp.sum(bits ^ (weight * jnp.uint32(0x9E3779B9)))])


def fingerprint(params: Params) -> str:
    """A hash of a parameter tree's paths, shapes, dtypes and values (computed where the arrays
    are, without gathering them): what a LoRA checkpoint records of its base."""
    leaves = lora.flat(params)
    sums = jax.jit(lambda t: {k: _leaf_sums(v) for k, v in t.items()})(leaves)
    digest = hashlib.sha256()
    for path in sorted(leaves):
        x, s = leaves[path], np.asarray(sums[path].addressable_data(0))
        digest.update(f"{path}:{x.shape}:{x.dtype}:{s.tolist()};".encode())
    return digest.hexdigest()[:16]


# ---- where a base comes from


def _step_dir(path: str, key: str = "init.base_from") -> epath.Path:
    """The step directory `path` (config.`key`) names: itself, or a workdir's newest intact
    step."""
    where = epath.Path(path).absolute()
    if (where / "config").exists():
        return where
    found = newest_intact(where / "checkpoints", lambda step: step)
    if found is None:
        if (where / "_CHECKPOINT_METADATA").exists():
            raise ConfigError(
                f"config.{key}={path} is a converted tower, not a run: leave "
                f"{key.split('.')[-1]} empty and set config.init.video_from={path}"
            )
        raise BaseMismatchError(f"config.{key}={path}: no run checkpoint there")
    return where / "checkpoints" / str(found[0])


def run_weights(path: str, system: System, mesh, rules) -> Params:
    """The plain model's weights of the run `path` (a workdir or a step): where a full
    fine-tune starts (`init.params_from`). Another architecture is refused naming the leaf."""
    if "://" not in path and not os.path.exists(path):
        raise ConfigError(f"config.init.params_from={path} is missing")
    return restore_merged(_step_dir(path, "init.params_from"), None, system, mesh, rules)


def describe(config: ml_collections.ConfigDict) -> str:
    """Where a run's base comes from, as its run record names it."""
    init = config.init
    if init.base_from:
        return os.path.abspath(init.base_from) if "://" not in init.base_from else init.base_from
    imports = [f"{k}={init[k]}" for k in ("video_from", "transcript_from") if init[k]]
    return f"init(seed={config.seed}{''.join(', ' + i for i in imports)})"


def init_base(system: System, config: ml_collections.ConfigDict, mesh, rules) -> Params:
    """The run's own init with its imports: what a LoRA run adapts when base_from is empty."""
    from harmony_jax.convert.f5_text import load_transcript
    from harmony_jax.convert.wan import load_video_tower

    plain = dataclasses.replace(system, lora=None)
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), plain.example_batch(1))
    params, _ = sharded_init(
        lambda rng: plain.init(rng, zeros()), mesh, rules, jax.random.key(config.seed)
    )
    for key, load in (("video_from", load_video_tower), ("transcript_from", load_transcript)):
        path = config.init[key]
        if path and not os.path.exists(path) and "://" not in path:
            raise BaseMismatchError(f"the base's config.init.{key}={path} is missing")
        if path:
            params = load(params, path)
    return params


def load_base(
    system: System, config: ml_collections.ConfigDict, mesh, rules, abstract: Params
) -> tuple[Params, str]:
    """(the frozen base of a LoRA run of `config`, laid out as `abstract` (the plain model's),
    its hash)."""
    base = config.init.base_from
    if not base:
        params = init_base(system, config, mesh, rules)
        return params, fingerprint(params)
    if "://" not in base and not os.path.exists(base):
        raise BaseMismatchError(f"config.init.base_from={base} is missing")
    return _restore(_step_dir(base), None, system, mesh, rules, abstract)


def check_base(config: ml_collections.ConfigDict, found: str, record: dict, where: str) -> None:
    """Refuses a base whose hash is not the one `record` (a checkpoint's lora_base) holds."""
    if record and record["hash"] != found:
        raise BaseMismatchError(
            f"{where} was trained on the base {record['from']} (hash {record['hash']}); "
            f"the base {describe(config)} has hash {found}: it is another model"
        )


def restore_merged(
    step_dir: epath.Path,
    config: ml_collections.ConfigDict | None,
    system: System,
    mesh,
    rules,
    abstract: Params | None = None,
    base_from: str | None = None,
) -> Params:
    """The plain model's weights of a step (float32 where the run kept them so): a full run's
    EMA or raw parameters; a LoRA run's base (hash checked) with its trained leaves, the
    adapters merged in. `config`: the step's own (read when None). `base_from`: where a LoRA
    run's base run is now, when it has moved since (`sample --lora_base`; its hash is checked
    as the recorded path's would be)."""
    return _restore(step_dir, config, system, mesh, rules, abstract, base_from, hashed=False)[0]


def _restore(
    step_dir, config, system, mesh, rules, abstract=None, base_from=None, *, hashed=True
) -> tuple[Params, str | None]:
    """(`restore_merged`'s weights, their hash when `hashed`). A LoRA run's hash is of what it
    stores, its base's hash and its trained leaves, not of the merged sum, whose last bits
    depend on the mesh that computed it: a LoRA run is the same base on any mesh."""
    step_dir = epath.Path(step_dir)
    config = read_config_file(step_dir / "config" / "metadata") if config is None else config
    abstract = plain_abstract(system, mesh, rules) if abstract is None else abstract
    spec = lora_spec(config, abstract)
    if spec is None:
        params = restore_params(step_dir, abstract)[1]
        return params, fingerprint(params) if hashed else None
    record = read_run(step_dir).get("lora_base")
    if record is None:
        raise CheckpointError(f"{step_dir}: a LoRA run's step without the record of its base")
    if config.init.base_from:  # the absolute path the run recorded, or where it is now
        config = ml_collections.ConfigDict(config.to_dict())
        config.init.base_from = base_from or record["from"]
    try:
        base, base_hash = load_base(system, config, mesh, rules, abstract)
    except BaseMismatchError as e:
        raise BaseMismatchError(
            f"{step_dir} is a LoRA run of the base {record['from']} (hash {record['hash']}), "
            f"which cannot be loaded: {e}"
        ) from None
    check_base(config, base_hash, record, str(step_dir))
    _, trained = restore_params(step_dir, trained_abstract(abstract, spec))
    digest = None
    if hashed:
        digest = hashlib.sha256(f"{base_hash}+{fingerprint(trained)}".encode()).hexdigest()[:16]
    merge = jax.jit(  # the base donated: each kernel becomes its merged self in place
        lambda b, t: lora.merge(lora.combine(b, t), spec),
        out_shardings=jax.tree.map(lambda s: s.sharding, abstract),
        donate_argnums=0,
    )
    return merge(base, trained), digest


def trained_abstract(plain: Params, spec: lora.LoraSpec) -> Params:
    """The trained leaves of a LoRA run (adapters, train_also) as sharded ShapeDtypeStructs,
    from the plain model's: A [.., in, r] shards as the kernel's in-axis, B [.., r, out] as
    its out-axis."""
    leaves = lora.flat(plain)
    out = {k: v for k, v in leaves.items() if lora.trainable(k, spec)}
    for module in spec.module_paths:
        kernel = leaves[f"dit/{module}/kernel"]
        *lead, fan_in, fan_out = kernel.shape
        names = tuple(kernel.sharding.spec) + (None,) * (kernel.ndim - len(kernel.sharding.spec))
        for name, shape, axes in (
            ("a", (*lead, fan_in, spec.rank), (*names[:-1], None)),
            ("b", (*lead, spec.rank, fan_out), (*names[:-2], None, names[-1])),
        ):
            out[f"dit/{module}/kernel_lora_{name}"] = jax.ShapeDtypeStruct(
                shape, kernel.dtype, sharding=NamedSharding(kernel.sharding.mesh, P(*axes))
            )
    return lora.unflat(out)
