"""model.attention='splash': the Pallas splash kernel (interpreted on this CPU) equals the 'xla'
kernel for every attention the model makes, skips the band's empty blocks, runs under Ulysses,
and a whole train step with it equals the 'xla' step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from harmony_jax import plan
from harmony_jax.codecs.wan22 import WanVAECodec
from harmony_jax.model import attention as attention_lib
from harmony_jax.model.attention import Attention, dot_product_attention
from harmony_jax.model.interaction import band_mask
from harmony_jax.model.splash import (
    SplashBlocks,
    band_kernel,
    block_sizes,
    computed_blocks,
    splash_attention,
)
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules
from harmony_jax.perf.train_step import random_batch
from harmony_jax.timeline import interval_centres
from harmony_jax.training.optim import make_optimizer
from harmony_jax.training.step import create_train_state, make_train_step

SMALL = SplashBlocks(block_q=128, block_kv=128, block_kv_compute=128)  # the kernel's minimum
AUDIO_RATE = 31.25  # MMAudio 16 kHz latents per second
F32_TOL, BF16_TOL = 1e-5, 2e-2  # bf16: outputs and gradients of O(1) values, 8-bit mantissa
# faster CPU compiles of the interpreted kernels; the arithmetic is the same
_FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)
jit = functools.partial(jax.jit, compiler_options=_FAST_COMPILE)


def _video_times(fps: float, frames: int) -> np.ndarray:
    """Latent-frame times of the Wan2.2 VAE (first frame alone, then 4 frames per latent)."""
    return WanVAECodec(path="", fps=fps).frame_times(frames)  # geometry only: no weights read


def _band(
    fps: float,
    latent_frames: int,
    tokens_per_frame: int,
    audio_frames: int,
    window_frames: float = 2.0,
) -> np.ndarray:
    """The model's A2V band [Lv, Ta] (video tokens x audio latents), as `cross_modal_geometry`
    builds it, from the codecs' frame times."""
    v = jnp.asarray(_video_times(fps, latent_frames), jnp.float32)[None]
    a = jnp.asarray(interval_centres(audio_frames, AUDIO_RATE), jnp.float32)[None]
    frames = band_mask(v, a, window_frames / (fps / 4))[0]
    return np.repeat(np.asarray(frames), tokens_per_frame, axis=0)


def _grad_check(lq, lk, mask, *, heads=2, head_dim=16, dtype=jnp.float32):
    """The loss value and (q, k, v) gradients of splash against 'xla'."""
    keys = jax.random.split(jax.random.key(lq * 1000 + lk), 3)
    q, k, v = (
        jax.random.normal(key, (2, n, heads, head_dim)).astype(dtype)
        for key, n in zip(keys, (lq, lk, lk))
    )
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))
    grad = lambda fn: jit(jax.value_and_grad(loss(fn), argnums=(0, 1, 2)))
    xla = grad(functools.partial(dot_product_attention, mask=mask))(q, k, v)
    splash = grad(functools.partial(splash_attention, mask=mask, blocks=SMALL))(q, k, v)
    tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
    (xla_loss, xla_grads), (loss_s, grads_s) = xla, splash
    np.testing.assert_allclose(loss_s, xla_loss, rtol=tol)
    for ours, theirs in zip(grads_s, xla_grads):
        np.testing.assert_allclose(
            np.asarray(ours, np.float32), np.asarray(theirs, np.float32), atol=tol, rtol=tol
        )


def _outputs_check(lq, lk, mask, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(7), 3)
    q, k, v = (
        jax.random.normal(key, (2, n, 2, 16)).astype(dtype) for key, n in zip(keys, (lq, lk, lk))
    )
    ours = jit(lambda q, k, v: splash_attention(q, k, v, mask=mask, blocks=SMALL))(q, k, v)
    theirs = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask))(q, k, v)
    tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
    np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(theirs, np.float32), atol=tol, rtol=tol
    )


def test_self_attention_of_lengths_not_block_multiples():
    _grad_check(200, 200, None)  # padded to 256, the padded keys masked


def test_padded_text_cross_attention():
    keys = np.zeros((2, 1, 1, 40), bool)
    keys[0, ..., :7] = True
    keys[1, ..., :31] = True  # [B, 1, 1, Lt] as DiTBlock passes a prompt's padding
    _grad_check(150, 40, jnp.asarray(keys))


@pytest.mark.parametrize("fps", [24.0, 8.0])
def test_a2v_and_v2a_bands(fps):
    """The GLDI band at Wan2.2's latent times against MMAudio's 31.25 Hz; lengths of no block
    multiple; V2A's mask is A2V's transposed, as in `cross_modal_geometry`."""
    latent_frames, audio = (6, 40) if fps == 24.0 else (5, 125)  # ~1.2 s / 4 s
    band = _band(fps, latent_frames, tokens_per_frame=24, audio_frames=audio)
    a2v = jnp.asarray(np.broadcast_to(band, (2, 1) + band.shape))
    _grad_check(band.shape[0], audio, a2v)
    _grad_check(audio, band.shape[0], a2v.swapaxes(-1, -2))


def test_skipped_blocks_are_never_read():
    """V2A over 8 s at 8 fps: audio block 0 (the first 4.1 s) never reaches the last video
    frames, so NaN there changes nothing: the block is skipped, not computed and masked."""
    band = _band(8.0, 17, tokens_per_frame=8, audio_frames=250)  # [136, 250]
    v2a = np.ascontiguousarray(band.T)  # [250 audio, 136 video]
    blocks = computed_blocks(jnp.asarray(v2a), block_sizes(SMALL, 250, 136))
    assert blocks.tolist() == [[True, False], [True, True]]
    mask = jnp.asarray(np.broadcast_to(v2a, (2, 1) + v2a.shape))
    q, k, v = (
        jax.random.normal(key, (2, n, 2, 16))
        for key, n in zip(jax.random.split(jax.random.key(3), 3), (250, 136, 136))
    )
    v_nan = v.at[:, 128:].set(jnp.nan)
    ours = splash_attention(q[:, :128], k, v_nan, mask=mask[:, :, :128], blocks=SMALL)
    theirs = jax.nn.dot_product_attention(q[:, :128], k, v, mask=mask[:, :, :128])
    np.testing.assert_allclose(ours, theirs, atol=F32_TOL)


def test_bfloat16_within_stated_tolerance():
    band = _band(24.0, 6, tokens_per_frame=24, audio_frames=40)
    _outputs_check(band.shape[0], 40, jnp.asarray(band)[None, None], dtype=jnp.bfloat16)
    _grad_check(200, 200, None, dtype=jnp.bfloat16)


def _analytic_band_blocks(q_times, k_times, window, bq, bk):
    """Blocks a band touches, counted from the token times alone: both streams are sorted in
    time, so a query block's keys run from the first key within `window` of its first query to
    the last key within `window` of its last query."""
    total = 0
    for start in range(0, len(q_times), bq):
        first, last = q_times[start], q_times[min(start + bq, len(q_times)) - 1]
        lo = np.searchsorted(k_times, first - window * (1 + 1e-6), side="left")
        hi = np.searchsorted(k_times, last + window * (1 + 1e-6), side="right") - 1
        total += hi // bk - lo // bk + 1 if hi >= lo else 0
    return total


@pytest.mark.parametrize(
    "fps,latent_frames,tokens,audio",
    [
        (24.0, 31, 16, 157),  # the paper's 121 frames, 24 fps, 5 s of 31.25 Hz audio (4x4 tokens)
        (8.0, 33, 8, 500),  # 16 s at 8 fps
    ],
)
def test_band_mask_skips_the_blocks_it_should(fps, latent_frames, tokens, audio):
    band = _band(fps, latent_frames, tokens, audio)
    window = 2.0 / (fps / 4)
    v_times = np.repeat(_video_times(fps, latent_frames), tokens)  # per video token
    a_times = interval_centres(audio, AUDIO_RATE)
    for q_times, k_times, mask in ((v_times, a_times, band), (a_times, v_times, band.T)):
        blocks = computed_blocks(
            jnp.asarray(np.ascontiguousarray(mask)), block_sizes(SMALL, *mask.shape)
        )
        expected = _analytic_band_blocks(q_times, k_times, window, 128, 128)
        assert blocks.sum() == expected < blocks.size  # A2V, then V2A: some blocks skipped


def test_auto_picks_splash_on_tpu(monkeypatch):
    q = jnp.zeros((1, 8, 1, 8))
    auto = functools.partial(dot_product_attention, implementation="auto")
    assert "pallas_call" not in str(jax.make_jaxpr(auto)(q, q, q))
    monkeypatch.setattr(attention_lib.jax, "default_backend", lambda: "tpu")
    assert "pallas_call" in str(
        jax.make_jaxpr(functools.partial(auto, splash_blocks=SMALL))(q, q, q)
    )


def test_block_config_is_checked_and_fitted():
    with pytest.raises(ValueError, match="model.splash.block_q=100"):
        SplashBlocks(block_q=100)
    with pytest.raises(ValueError, match="does not divide model.splash.block_kv=512"):
        SplashBlocks(block_kv=512, block_kv_compute=384)
    sizes = block_sizes(SplashBlocks(block_q=2048, block_kv=2048), 27280, 157)
    assert (sizes.block_q, sizes.block_kv, sizes.block_kv_compute) == (2048, 256, 256)
    with pytest.raises(ValueError, match="model.splash.band_block=0"):
        SplashBlocks(band_block=0)
    a2v = block_sizes(SplashBlocks(), 27280, 157, band_axis="kv")  # off TPU: 512 blocks
    v2a = block_sizes(SplashBlocks(), 157, 27280, band_axis="q")
    assert (a2v.block_q, a2v.block_kv, v2a.block_q, v2a.block_kv) == (512, 128, 128, 512)


def test_default_band_tiles_skip_at_the_papers_geometry():
    """121 frames at 24 fps (31 latent frames x 880 tokens), 157 audio latents: the default
    tiles (512, and `band_block` 128 on the audio axis) skip what the analytic count says, about
    44%; the audio axis in one block skips nothing."""
    band = _band(24.0, 31, 880, 157)
    v_times = np.repeat(_video_times(24.0, 31), 880)
    a_times = interval_centres(157, AUDIO_RATE)
    for q_times, k_times, mask, axis in (
        (v_times, a_times, band, "kv"),
        (a_times, v_times, band.T, "q"),
    ):
        mask = jnp.asarray(np.ascontiguousarray(mask))
        sizes = block_sizes(SplashBlocks(), *mask.shape, band_axis=axis)
        blocks = computed_blocks(mask, sizes)
        assert blocks.sum() == _analytic_band_blocks(
            q_times, k_times, 2.0 / 6.0, sizes.block_q, sizes.block_kv
        )
        assert 0.4 < 1 - blocks.mean() < 0.5
        assert computed_blocks(mask, block_sizes(SplashBlocks(), *mask.shape)).all()


@pytest.mark.devices(8)
def test_ulysses_runs_the_splash_kernel_on_local_heads():
    """Self-attention with tokens split 4 ways over 'sequence' and the batch 2 ways over 'data':
    splash on each device's heads equals plain 'xla' attention, values and gradients."""
    config = ml_collections.ConfigDict(
        dict(mesh=dict(data=2, sequence=4, tensor=1), axis_rules=tiny.get_config().axis_rules)
    )
    mesh, rules = make_mesh(config.mesh), axis_rules(config)
    x = jax.random.normal(jax.random.key(0), (2, 24, 32))  # [B, L, D]: 24 pads to 128
    angles = jax.random.uniform(jax.random.key(1), (24, 4), maxval=3.0)
    layers = {
        impl: Attention(dim=32, heads=4, implementation=impl, splash_blocks=SMALL)
        for impl in ("xla", "splash")
    }
    params = layers["xla"].init(jax.random.key(2), x)

    def loss(impl):
        def fn(params, x):
            y = layers[impl].apply(params, x, q_angles=angles, k_angles=angles)
            return jnp.sum(y * jnp.cos(y))

        return jit(jax.value_and_grad(fn, argnums=(0, 1)))

    plain = loss("xla")(params, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        split = loss("splash")(params, x)
        hlo = loss("splash").lower(params, x).as_text()
    assert "all_to_all" in hlo or "all-to-all" in hlo
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=F32_TOL), split, plain
    )


def _train_step(attention: str, remat: str):
    config = tiny.get_config()
    config.batch_size = 2
    config.data.update(num_frames=4, height=8, width=8, ref_audio_seconds=0.5)
    config.model.update(attention=attention, remat=remat)
    config.model.splash.update(block_q=128, block_kv=128, block_kv_compute=128)
    config.optim.update(lr=1e-3, warmup_steps=0)
    system = plan.latent_system(config)
    batch = random_batch(system, 2, np.random.default_rng(0))
    batch["video_text_mask"] = batch["video_text_mask"].at[:, 5:].set(False)  # padded prompt
    params = jax.jit(system.init)(jax.random.key(0), batch)
    tx = make_optimizer(config.optim, params, config.total_steps)
    state = create_train_state(params, tx, False)
    new_state, metrics = jit(make_train_step(system, tx, config))(state, batch)
    return metrics, new_state.params


@pytest.mark.slow
def test_whole_train_step_with_splash_equals_xla():
    """The tiny model, scanned layers, full remat, a reference voice (the global style path),
    a padded prompt: one optimizer step with every attention through splash."""
    metrics_x, params_x = _train_step("xla", "full")
    metrics_s, params_s = _train_step("splash", "full")
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_s[key], metrics_x[key], rtol=F32_TOL)
    # Adam's first step moves each parameter by about lr * sign(g), so where g is ~0 float noise
    # decides the sign: parameters agree within 2% of the learning rate (1e-3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), params_s, params_x)


def test_every_remat_policy_traces_with_splash():
    """Scanned layers under each remat policy ('full' runs in the train step above): the
    kernel's custom gradient goes through every policy."""
    from test_model import tiny_model_config

    from harmony_jax.model import HarmonyDiT
    from harmony_jax.model.inputs import example_inputs

    for remat in ("none", "dots", "dots_no_batch"):
        cfg = tiny_model_config(attention="splash", remat=remat, splash=SMALL)
        inputs = example_inputs(
            cfg,
            batch=1,
            video_frames=2,
            height=4,
            width=4,
            audio_frames=10,
            audio_rate=AUDIO_RATE,
            ref_frames=2,
        )
        model = HarmonyDiT(cfg)
        params = jax.eval_shape(model.init, jax.random.key(1), *inputs)
        loss = lambda p: sum(jnp.sum(jnp.sin(o)) for o in model.apply(p, *inputs))  # noqa: B023
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert "pallas_call" in jaxpr and ("remat" in jaxpr) == (remat != "none"), remat


def test_band_block_maps_are_built_once_per_geometry(monkeypatch):
    """Two unscanned joint layers make four band attentions (A2V, V2A each); the bands' block
    maps are built twice, in `cross_modal_geometry`, and no attention builds its own."""
    from test_model import tiny_model_config

    from harmony_jax.model import HarmonyDiT, interaction, splash
    from harmony_jax.model.inputs import example_inputs

    built = {"geometry": [], "per call": [], "attention": []}

    def counting(where, fn):
        def wrapped(mask, sizes, **kw):
            built[where].append((mask.shape, sizes.block_q, sizes.block_kv))
            return fn(mask, sizes, **kw)

        return wrapped

    monkeypatch.setattr(interaction, "band_kernel", counting("geometry", splash.band_kernel))
    monkeypatch.setattr(splash, "band_kernel", counting("per call", splash.band_kernel))
    attend = splash._band_attention
    monkeypatch.setattr(
        splash, "_band_attention", lambda *a: built["attention"].append(a[0].shape) or attend(*a)
    )
    cfg = tiny_model_config(attention="splash", scan_layers=False, depth=2, splash=SMALL)
    inputs = example_inputs(
        cfg,
        batch=1,
        video_frames=2,
        height=4,
        width=4,
        audio_frames=10,
        audio_rate=AUDIO_RATE,
        ref_frames=2,
    )
    model = HarmonyDiT(cfg)
    params = jax.eval_shape(model.init, jax.random.key(1), *inputs)
    built["geometry"].clear(), built["attention"].clear()  # init traced the model too
    jax.make_jaxpr(model.apply)(params, *inputs)
    lv = 2 * 2 * 2  # 2 latent frames of 2x2 tokens (4x4 latents, 1x2x2 patch)
    assert built["per call"] == []
    assert built["geometry"] == [((1, 1, lv, 10), 128, 128), ((1, 1, 10, lv), 128, 128)]
    assert len(built["attention"]) == 4  # each layer's A2V and V2A ran the built block map


@pytest.mark.devices(8)
def test_band_split_over_the_batch_equals_xla():
    """A2V with the batch split 2 ways ('data') and heads 2 ways ('tensor'): each device runs
    its rows of the block map built once outside (`band_kernel`), values and gradients as
    'xla'."""
    config = ml_collections.ConfigDict(
        dict(mesh=dict(data=2, sequence=1, tensor=2), axis_rules=tiny.get_config().axis_rules)
    )
    mesh, rules = make_mesh(config.mesh, jax.devices()[:4]), axis_rules(config)
    band = _band(24.0, 6, tokens_per_frame=24, audio_frames=40)
    mask = jnp.asarray(np.broadcast_to(band, (2, 1) + band.shape))
    keys = jax.random.split(jax.random.key(5), 3)
    q, k, v = (
        jax.random.normal(key, (2, n, 2, 16)) for key, n in zip(keys, (band.shape[0], 40, 40))
    )

    def loss(attend):
        return jit(
            jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v))), argnums=(0, 1, 2))
        )

    plain = loss(functools.partial(dot_product_attention, mask=mask))(q, k, v)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):

        def splash(q, k, v):
            built = band_kernel(mask, block_sizes(SMALL, band.shape[0], 40))
            return splash_attention(q, k, v, mask=mask, band=built)

        split = loss(splash)(q, k, v)
        assert "shard_map" in str(jax.make_jaxpr(splash)(q, k, v))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=F32_TOL), split, plain
    )
