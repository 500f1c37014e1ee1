"""Scale-out on 8 simulated CPU devices: one tiny training run gives the same losses on every mesh,
parameters (and their optimizer moments) land where the axis rules say, Ulysses and the blockwise
long-sequence kernel equal plain attention, and the mesh is built from config (with -1, a
sequence axis, and DCN slices)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import tiny
from harmony_jax import plan
from harmony_jax.model.attention import Attention, blockwise_attention, dot_product_attention
from harmony_jax.parallel import ulysses
from harmony_jax.parallel.mesh import device_grid, make_mesh, resolve_mesh_shape
from harmony_jax.parallel.sharding import axis_rules, batch_sharding, replicated
from harmony_jax.training.state import make_train_state
from harmony_jax.training.step import make_train_step

STEPS, BATCH = 3, 8
# ~2.5x faster CPU compiles of the train steps; the arithmetic is the same
_FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)
MESHES = {  # (data, fsdp, tensor) as the issue names them, plus one with a sequence axis
    "8x1x1": dict(data=8, fsdp=1, tensor=1),
    "2x4x1": dict(data=2, fsdp=4, tensor=1),
    "2x2x2": dict(data=2, fsdp=2, tensor=2),
    "2x1x2x2 (data, fsdp, sequence, tensor)": dict(data=2, fsdp=1, sequence=2, tensor=2),
}


def _config(mesh: dict) -> ml_collections.ConfigDict:
    config = tiny.get_config()
    config.batch_size = BATCH
    config.data.update(num_frames=4, height=8, width=8)  # 4 x 4 x 4 = 64 video tokens
    config.optim.update(lr=1e-3, warmup_steps=0)
    config.mesh.update(**mesh)
    return config


def _batches(system, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """STEPS synthetic global batches of latents and text embeddings."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        batch = {}
        for key, spec in plan.abstract_batch(system, BATCH).items():
            if spec.dtype == jnp.bool_:
                batch[key] = np.ones(spec.shape, bool)
            elif spec.dtype == jnp.int32:
                batch[key] = rng.integers(
                    1, system.model_config.transcript.vocab_size, spec.shape, dtype=np.int32
                )
            else:
                batch[key] = rng.normal(size=spec.shape).astype(np.float32)
        batches.append(batch)
    return batches


def _train(config, devices):
    """Losses of STEPS steps and the final state, run as training runs them on this mesh (on
    latents: the codecs have no parameters to shard and only slow the compile)."""
    mesh = make_mesh(config.mesh, devices)
    rules = axis_rules(config)
    system = plan.latent_system(config)
    tx, state = make_train_state(system, config, mesh, rules)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    data = batch_sharding(mesh)
    step = jax.jit(
        make_train_step(system, tx, config),
        in_shardings=(shardings, data),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=_FAST_COMPILE,
    )
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for batch in _batches(system):
            batch = {k: jax.make_array_from_process_local_data(data, v) for k, v in batch.items()}
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return np.asarray(losses), state, mesh


@pytest.fixture(scope="module")
def runs():
    """The reference run on one device, then every mesh of MESHES on all 8."""
    out = {"1x1x1": _train(_config(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])}
    for name, mesh in MESHES.items():
        out[name] = _train(_config(mesh), jax.devices()[:8])
    return out


@pytest.mark.devices(8)
@pytest.mark.slow
def test_same_losses_on_every_mesh(runs):
    reference = runs["1x1x1"][0]
    assert np.all(np.isfinite(reference)) and reference[-1] != reference[0]
    for name in MESHES:
        np.testing.assert_allclose(
            runs[name][0], reference, rtol=2e-4, atol=1e-5, err_msg=f"mesh {name}"
        )


@pytest.mark.devices(8)
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, embed",
    [("2x2x2", "fsdp"), ("2x1x2x2 (data, fsdp, sequence, tensor)", ("fsdp", "sequence"))],
)
def test_parameters_land_as_the_rules_say(runs, name, embed):
    _, state, mesh = runs[name]
    params = state.params
    layers = params["dit"]["layers"]
    attention = layers["video_block"]["self_attn"]
    expected = {  # [layers, ...] for scanned layers
        "attention q/k/v kernels": (
            [attention[n]["kernel"] for n in "qkv"],
            P(None, embed, "tensor"),
        ),
        "attention out kernel": ([attention["out"]["kernel"]], P(None, "tensor", embed)),
        "ffn in": ([layers["audio_block"]["ffn"]["fc1"]["kernel"]], P(None, embed, "tensor")),
        "ffn out": ([layers["audio_block"]["ffn"]["fc2"]["kernel"]], P(None, "tensor", embed)),
        "qk norms": ([attention["norm_q"]["scale"]], P(None, "tensor")),
        "layer norms": ([layers["video_block"]["norm2"]["ln"]["scale"]], P(None, embed)),
        "modulation tables": (
            [layers["video_block"]["scale_shift_table"]],
            P(None, None, None, embed),
        ),
        "embeddings": (
            [
                params["dit"]["video_patch_embed"]["kernel"],
                params["dit"]["transcript"]["char_embed"]["embedding"],
            ],
            P(None, embed),
        ),
    }
    for kind, (leaves, spec) in expected.items():
        for leaf in leaves:
            assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim), (
                kind,
                leaf.sharding.spec,
                spec,
            )
            shard = leaf.addressable_shards[0].data.shape
            want = tuple(
                n
                // int(
                    np.prod([mesh.shape[a] for a in ((ax,) if isinstance(ax, str) else ax or ())])
                )
                for n, ax in zip(leaf.shape, list(spec) + [None] * leaf.ndim)
            )
            assert shard == want, (kind, leaf.shape, shard, want)
    # the optimizer's moments follow their parameters
    moments = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
        if jax.tree_util.keystr(path).endswith("['video_block']['self_attn']['q']['kernel']")
    ]
    assert len(moments) == 2  # mu, nu
    for leaf in moments:
        assert leaf.sharding.is_equivalent_to(attention["q"]["kernel"].sharding, 3)


@pytest.mark.devices(8)
def test_state_layout_with_a_frozen_tower():
    """Moments exist only for trained parameters (multi_transform); each is laid out as its
    parameter, EMA too; counters are replicated."""
    config = _config(dict(data=2, fsdp=2, tensor=2))
    config.optim.freeze = "^dit/layers/video_block"
    mesh, rules = make_mesh(config.mesh), axis_rules(config)
    tx, state = plan.abstract_state(plan.latent_system(config), config, mesh, rules)
    shardings = {
        jax.tree_util.keystr(p): x.sharding
        for p, x in jax.tree_util.tree_leaves_with_path(state.params)
    }
    moments = jax.tree_util.tree_leaves_with_path(state.opt_state)
    assert not any("video_block" in jax.tree_util.keystr(p) and x.ndim for p, x in moments)
    checked = 0
    for path, leaf in moments:
        name = jax.tree_util.keystr(path)
        owner = [k for k in shardings if name.endswith(k)]
        if leaf.ndim and owner:
            assert leaf.sharding == shardings[owner[0]], name
            checked += 1
        else:
            assert leaf.sharding.is_fully_replicated, name
    assert checked > 0 and state.step.sharding.is_fully_replicated


@pytest.mark.devices(8)
def test_ulysses_attention_equals_plain_attention():
    """Self-attention (values and gradients) with tokens split 4 ways over 'sequence'."""
    config = ml_collections.ConfigDict(
        dict(mesh=dict(data=2, sequence=4, tensor=1), axis_rules=tiny.get_config().axis_rules)
    )
    mesh, rules = make_mesh(config.mesh), axis_rules(config)
    layer = Attention(dim=32, heads=4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))  # [B, L, D]
    angles = jax.random.uniform(jax.random.key(1), (16, 4), maxval=3.0)  # [L, Hd/2]
    params = layer.init(jax.random.key(2), x)

    def loss(params, x):
        y = layer.apply(params, x, q_angles=angles, k_angles=angles)
        return jnp.sum(y * jnp.cos(y)), y

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, plain), plain_grads = grad(params, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        assert ulysses.sequence_axis(16, 4) == "sequence"
        assert ulysses.sequence_axis(18, 4) is None  # 18 tokens do not split 4 ways
        hlo = grad.lower(params, x).as_text()
        (_, split), split_grads = grad(params, x)
    assert "all_to_all" in hlo or "all-to-all" in hlo
    np.testing.assert_allclose(split, plain, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        split_grads,
        plain_grads,
    )


@pytest.mark.parametrize("mask", ["band", "keys", "empty rows"])
def test_blockwise_attention_equals_plain_attention(mask):
    """The long-sequence kernel ('auto' off GPU): lengths that do not divide the block, masks of
    every shape the model uses, rows with nothing to attend to (no mask: the Ulysses test)."""
    q, k, v = (
        jax.random.normal(key, (2, n, 3, 8))
        for key, n in zip(jax.random.split(jax.random.key(4), 3), (37, 45, 45))
    )
    masks = {
        "band": jax.random.bernoulli(jax.random.key(5), 0.7, (2, 1, 37, 45)),
        "keys": jax.random.bernoulli(jax.random.key(6), 0.6, (2, 1, 1, 45)),
        "empty rows": jnp.zeros((2, 1, 37, 45), bool).at[:, :, :20].set(True),
    }
    m = masks[mask]
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask=m)))
    grad = lambda fn: jax.jit(jax.value_and_grad(loss(fn), argnums=(0, 1, 2)))
    plain = grad(jax.nn.dot_product_attention)(q, k, v)
    ours = grad(functools.partial(blockwise_attention, block=16))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours, plain)


def test_auto_attention_goes_blockwise_for_long_sequences_off_gpu():
    q = jax.random.normal(jax.random.key(7), (1, 1100, 1, 8))  # 1100^2 > 4 blocks of 512^2
    auto = functools.partial(dot_product_attention, implementation="auto")
    assert "scan" in str(jax.make_jaxpr(auto)(q, q, q))
    np.testing.assert_allclose(auto(q, q, q), dot_product_attention(q, q, q), rtol=1e-4, atol=1e-5)


@pytest.mark.devices(8)
def test_ulysses_runs_the_blockwise_kernel():
    """Ulysses around the long-sequence kernel (loops inside shard_map), values and gradients."""
    mesh = jax.make_mesh((4, 2), ("sequence", "data"), devices=jax.devices()[:8])
    q, k, v = jax.random.normal(jax.random.key(3), (3, 2, 24, 4, 8))  # 3 x [B, L, N, Hd]
    kernel = functools.partial(blockwise_attention, block=5)
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.tanh(fn(q, k, v)))
    split = lambda q, k, v: ulysses.ulysses_attention(kernel, q, k, v, "sequence")
    plain = jax.value_and_grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    with jax.set_mesh(mesh):
        ours = jax.jit(jax.value_and_grad(loss(split), argnums=(0, 1, 2)))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours, plain)


def test_mesh_from_config_sizes_and_errors():
    cfg = lambda **kw: ml_collections.ConfigDict(kw)
    assert resolve_mesh_shape(cfg(data=-1, fsdp=2, tensor=1), 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    assert resolve_mesh_shape(cfg(data=1, fsdp=-1, sequence=2, tensor=2), 16) == {
        "data": 1,
        "fsdp": 4,
        "sequence": 2,
        "tensor": 2,
    }
    # per-slice sizes: 2 slices of 8 devices, -1 resolved within a slice
    assert resolve_mesh_shape(cfg(data=1, fsdp=-1, tensor=2, dcn_data=2), 16) == {
        "data": 1,
        "fsdp": 4,
        "tensor": 2,
    }
    with pytest.raises(ValueError, match="3 equal slices"):
        resolve_mesh_shape(cfg(data=-1, dcn_data=3), 8)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        resolve_mesh_shape(cfg(data=-1, fsdp=0), 8)
    with pytest.raises(ValueError, match="names no mesh axis"):
        axis_rules(
            ml_collections.ConfigDict(dict(mesh=dict(data=-1), axis_rules=(("embed", "fsdpp"),)))
        )


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def test_multislice_grid_keeps_slices_on_the_dcn_axis():
    """2 slices x 4 devices, dcn_data=2: the data axis crosses slices, fsdp stays inside one."""
    devices = [_FakeDevice(i, slice_index=i // 4) for i in range(8)]
    cfg = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=2))
    grid = device_grid(cfg, devices)
    assert grid.shape == (2, 4, 1)
    for row in range(2):
        assert {d.slice_index for d in grid[row].ravel()} == {row}
