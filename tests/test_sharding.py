"""Sharded init and a jitted forward on 8 simulated CPU devices (see conftest.py)."""

import flax.linen as nn
import jax
import ml_collections
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import tiny
from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.model.inputs import example_inputs
from harmony_jax.parallel.mesh import make_mesh, resolve_mesh_shape
from harmony_jax.parallel.sharding import axis_rules, batch_sharding, sharded_init


def test_mesh_shape_resolution_and_errors():
    cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=2))
    assert resolve_mesh_shape(cfg, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="not divisible"):
        resolve_mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, tensor=1)), 8)
    with pytest.raises(ValueError, match="only one axis"):
        resolve_mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=-1, tensor=1)), 8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        resolve_mesh_shape(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=2)), 8)


@pytest.mark.devices(8)
def test_sharded_init_and_forward_on_2x2x2_mesh():
    config = tiny.get_config()
    config.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = make_mesh(config.mesh)
    rules = axis_rules(config)
    cfg = ModelConfig.from_config(config.model, video_latent_rate=4.0)
    model = HarmonyDiT(cfg)
    inputs = example_inputs(
        cfg, batch=4, video_frames=4, height=8, width=8, audio_frames=16, audio_rate=62.5
    )
    params, shardings = sharded_init(model.init, mesh, rules, jax.random.key(0), *inputs)

    layers = params["params"]["layers"]
    q_kernel = layers["video_block"]["self_attn"]["q"]["kernel"]  # [layers, embed, heads]
    assert q_kernel.sharding.spec == P(None, "fsdp", "tensor")
    out_kernel = layers["video_block"]["self_attn"]["out"]["kernel"]  # [layers, heads, embed]
    assert out_kernel.sharding.spec == P(None, "tensor", "fsdp")
    ffn = layers["audio_block"]["ffn"]["fc1"]["kernel"]  # [layers, embed, mlp]
    assert ffn.sharding.spec == P(None, "fsdp", "tensor")
    table = layers["video_block"]["scale_shift_table"]  # [layers, 1, 6, embed]
    assert table.sharding.spec == P(None, None, None, "fsdp")
    # each device holds a quarter of a (fsdp x tensor)-sharded kernel
    shard = q_kernel.addressable_shards[0].data
    assert shard.shape == (q_kernel.shape[0], q_kernel.shape[1] // 2, q_kernel.shape[2] // 2)

    batch = jax.device_put(inputs[:4], batch_sharding(mesh))
    cond = jax.device_put(inputs[4], batch_sharding(mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out_v, out_a = jax.jit(model.apply)(params, *batch, cond)
    assert out_v.shape == inputs[0].shape and out_a.shape == inputs[1].shape
    assert isinstance(out_v.sharding, NamedSharding)
