"""The benchmarks' core functions at the tiniest size: the tables have their rows and columns and
every measured number is finite and positive (no timing is asserted)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmony_jax import plan
from harmony_jax.model.attention import dot_product_attention
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules
from harmony_jax.perf import sampler
from harmony_jax.perf import train_step as bench


def _tiniest():
    config = bench.quick_config()
    config.data.update(num_frames=4, height=8, width=8)
    config.model.update(depth=1)
    config.model.video.update(dim=16, ffn_dim=32)
    config.model.audio.update(dim=16, ffn_dim=32)
    config.batch_size = 2
    return config


def _numbers(table: str, headers) -> list[list[str]]:
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(headers) + " |"
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _positive(cell: str) -> bool:
    return math.isfinite(float(cell)) and float(cell) > 0


def test_train_step_table():
    """One measured row, one the CPU cannot run (with why), an interpreted splash row (noted)
    and one skipped where interpreting is not asked for; the ratio table pairs splash with
    xla."""
    config = _tiniest()
    config.model.splash.update(block_q=128, block_kv=128, block_kv_compute=128)
    rows, peak, what = bench.measure(
        config,
        remats=("none",),
        attentions=("xla", "cudnn", "splash"),
        dtypes=("float32",),
        steps=2,
        warmup=1,
        num_devices=1,
    )
    assert peak > 0 and "matmul" in what
    cells = _numbers(bench.table(rows, peak), bench.HEADERS)
    assert [c[:3] for c in cells] == [
        ["none", "xla", "float32"],
        ["none", "cudnn", "float32"],
        ["none", "splash", "float32"],
    ]
    measured, skipped, splash = cells
    assert all(_positive(c) for c in measured[3:8] + measured[9:10]), measured
    assert measured[8] == "n/a" and measured[10] == ""  # no allocator statistics on CPU
    assert skipped[3:10] == ["-"] * 7 and "NVIDIA GPU" in skipped[10]
    assert all(_positive(c) for c in splash[3:8] + splash[9:10]), splash
    assert splash[10].startswith("interpreted")
    ratios = _numbers(
        bench.ratio_table(rows, baseline="xla"), [h.format("xla") for h in bench.RATIO_HEADERS]
    )
    assert [r[:3] for r in ratios] == [["none", "float32", "splash"]]
    assert all(_positive(c) for c in ratios[0][3:])
    assert bench.ratio_table(rows) == ""  # no blockwise row to pair with
    row = bench.measure_row(config, "none", "splash", "float32", interpret_splash=False)
    assert row.step_seconds is None and "interpreted" in row.note


def test_bfloat16_compute_keeps_float32_master_weights_in_the_train_step():
    """The step's parameters and Adam moments stay float32; the matmuls run in bfloat16."""
    config = bench.row_config(bench.quick_config(), "none", "xla", "bfloat16")
    system = plan.latent_system(config)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    tx, state = plan.abstract_state(system, config, mesh, axis_rules(config))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    new_state, _ = jax.eval_shape(
        bench.make_train_step(system, tx, config), state, plan.abstract_batch(system, 2)
    )
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    shares = bench.matmul_dtype_shares(config)
    assert shares["bfloat16"] > 0.7 and shares.get("float32", 0) < 0.1, shares
    assert bench.matmul_dtype_shares(bench.row_config(config, "none", "xla", "float32")) == {
        "float32": 1.0
    }


def test_encode_and_latent_vs_media_step_tables(tmp_path):
    """Encode clips/s per stage, then the step fed latents and fed media: the ratio's base row
    is 1 and every number is positive."""
    from harmony_jax.perf import encode

    config = _tiniest()
    config.data.num_frames = 8  # sounding shapes needs room for a bounce
    src = encode.write_clip_folder(config, str(tmp_path / "clips"), 2)
    rows = encode.measure_encode(config, src, str(tmp_path / "latents"), runs=1)
    cells = _numbers(encode.encode_table(rows), encode.ENCODE_HEADERS)
    assert [c[1] for c in cells] == ["2", str(jax.local_device_count()), "2"]  # 1 per device
    assert all(_positive(c) for row in cells for c in row[2:])
    steps = encode.measure_steps(config, steps=1, warmup=1, num_devices=1)
    cells = _numbers(encode.step_table(steps), encode.STEP_HEADERS)
    assert [c[0] for c in cells] == ["latents", "media"] and cells[0][3] == "1"
    assert all(_positive(c) for row in cells for c in row[1:])


def test_sampler_table():
    """Two kernels in one run: each block of rows against its own joint forward and against the
    first kernel's same measurement; interpreted splash is named so."""
    config = sampler.quick_sampler_config()
    tiny = _tiniest()
    config.data, config.model = tiny.data, tiny.model
    config.model.splash.update(block_q=128, block_kv=128, block_kv_compute=128)
    assert sampler.default_attentions(config, quick=True) == ("xla", "blockwise", "splash")
    assert sampler.default_attentions(config, quick=False) == ("xla",)  # a CPU
    times = sampler.measure_attentions(config, ("xla", "splash"), steps=2, runs=1, warmup=1)
    cells = _numbers(sampler.sampler_table(times), sampler.headers("xla"))
    what = [
        "joint forward",
        "batched forward (the SyncCFG call)",
        "SyncCFG step (in the jitted sampler)",
        "SyncCFG clip (2 steps)",
    ]
    assert [c[:2] for c in cells] == [["xla", w] for w in what] + [
        ["splash (interpreted)", w] for w in what
    ]
    assert [c[2] for c in cells] == ["1", "3", "3", "3"] * 2
    assert all(_positive(c) for row in cells for c in row[3:])
    assert [c[5] for c in cells[:4]] == ["1"] * 4  # xla against itself


def test_peer_table():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from harmony_jax.perf import peer

    shape = peer.PeerShape(
        heads=2,
        head_dim=8,
        depth=1,
        ffn_dim=32,
        channels=4,
        text_dim=8,
        frames=2,
        height=4,
        width=4,
        text_len=3,
    )
    rows = peer.measure_peer(shape, runs=1, warmup=0)
    cells = _numbers(peer.peer_table(rows), peer.HEADERS)
    assert [c[:2] for c in cells] == [["per token (TI2V)", "8"], ["one per sample", "8"]]
    assert all(_positive(c) for row in cells for c in row[2:5])
    assert all(float(row[5]) < 1e-4 for row in cells)  # the same function on both sides


def test_forced_blockwise_attention_with_no_queries():
    """The style path without a reference voice attends from 0 queries; 'blockwise' (which the
    bench forces) must return the same empty result as the plain kernel."""
    q = jnp.zeros((2, 0, 2, 8))
    k = v = jax.random.normal(jax.random.key(0), (2, 5, 2, 8))
    out = dot_product_attention(q, k, v, implementation="blockwise")
    assert out.shape == (2, 0, 2, 8)
    np.testing.assert_array_equal(out, dot_product_attention(q, k, v))


@pytest.mark.devices(8)
def test_sampler_layout_table():
    """One device in float32 (the base), bfloat16, int8 kernels, and a 2x2x2 mesh: every row
    against the base, the base against itself; int8 and the mesh hold fewer bytes per device."""
    from harmony_jax.perf import sampler_layouts as layouts

    config = sampler.quick_sampler_config()
    tiny = _tiniest()
    config.data, config.model = tiny.data, tiny.model
    rows = layouts.measure_layouts(
        config, layouts.default_layouts("data=2,fsdp=2,tensor=2"), steps=2, runs=1
    )
    cells = _numbers(layouts.layout_table(rows), layouts.HEADERS)
    assert [c[:3] for c in cells] == [
        ["1 device", "float32", "none"],
        ["1 device", "bfloat16", "none"],
        ["1 device", "bfloat16", "int8"],
        ["data=2,fsdp=2,tensor=2", "float32", "none"],
        ["data=2,fsdp=2,tensor=2", "bfloat16", "int8"],
    ]
    assert all(_positive(c) for row in cells for c in row[3:])
    assert cells[0][4] == cells[0][6] == "1"
    assert rows[2].device_bytes < rows[1].device_bytes < rows[0].device_bytes
    assert rows[4].device_bytes < rows[3].device_bytes < rows[0].device_bytes
