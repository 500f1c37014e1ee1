"""The paper's mechanisms tested where they live: GLDI's temporal band (model/interaction.py)
against the Ovi-like baseline (model/global_interaction.py), the reference-audio path, and the
scanned layer stack against the same weights unrolled (model/dit.py).

Output projections start at zero, so each interaction is first moved by one training step: at
init every interaction is the identity and no test of locality could fail.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.model.global_interaction import GlobalInteraction
from harmony_jax.model.inputs import example_inputs
from harmony_jax.model.interaction import GLDI, cross_modal_geometry

VIDEO_RATE, AUDIO_RATE = 4.0, 16.0  # latent frames per second
FRAMES, TOKENS_PER_FRAME, AUDIO_FRAMES, REF = 8, 4, 32, 3  # 2 s of clip


def _config(mode: str) -> ModelConfig:
    cfg = ModelConfig.from_config(tiny.get_config().model, video_latent_rate=VIDEO_RATE)
    return dataclasses.replace(cfg, interaction=dataclasses.replace(cfg.interaction, mode=mode))


def _trained_interaction(mode: str):
    """(apply(x_v, x_a) -> (new_v, new_a), x_v, x_a, geometry) after one Adam step on a random
    regression target, so the zero-initialised projections are no longer zero."""
    cfg = _config(mode)
    module = {"gldi": GLDI, "global": GlobalInteraction}[mode](cfg, REF)
    _, _, _, _, cond = example_inputs(
        cfg,
        batch=1,
        video_frames=FRAMES,
        height=1,
        width=TOKENS_PER_FRAME,
        audio_frames=AUDIO_FRAMES,
        audio_rate=AUDIO_RATE,
    )
    geo = cross_modal_geometry(cfg, cond, FRAMES, TOKENS_PER_FRAME, AUDIO_FRAMES)
    k_v, k_a, k_t, k_init = jax.random.split(jax.random.key(0), 4)
    x_v = jax.random.normal(k_v, (1, FRAMES * TOKENS_PER_FRAME, cfg.video.dim))
    x_a = jax.random.normal(k_a, (1, REF + AUDIO_FRAMES, cfg.audio.dim))
    target_v, target_a = jax.random.normal(k_t, x_v.shape), jax.random.normal(k_t, x_a.shape)
    params = module.init(k_init, x_v, x_a, geo)

    def loss(p):
        new_v, new_a = module.apply(p, x_v, x_a, geo)
        return jnp.mean((new_v - target_v) ** 2) + jnp.mean((new_a - target_a) ** 2)

    tx = optax.adam(1e-2)
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
    params = optax.apply_updates(params, updates)
    apply = jax.jit(lambda v, a: module.apply(params, v, a, geo))
    return apply, x_v, x_a, cfg


def _frame(x_v: jax.Array, i: int) -> np.ndarray:
    return np.asarray(x_v[:, i * TOKENS_PER_FRAME : (i + 1) * TOKENS_PER_FRAME])


@pytest.fixture(scope="module", params=["gldi", "global"])
def trained(request):
    return request.param, _trained_interaction(request.param)


def test_audio_outside_the_band_does_not_reach_the_video_and_does_without_one(trained):
    """Video frame 0 (t = 0) hears only the audio within `window` latent frames of it under
    GLDI: audio perturbed beyond that leaves its tokens bit-for-bit, while the frames whose band
    holds the perturbed audio do move. Under the Ovi-like baseline frame 0 moves too."""
    mode, (apply, x_v, x_a, cfg) = trained
    window_s = cfg.interaction.window / VIDEO_RATE
    audio_times = (np.arange(AUDIO_FRAMES) + 0.5) / AUDIO_RATE
    far = audio_times > window_s + 0.5  # well outside frame 0's band, inside the last frames'
    assert far.any() and not far.all()
    noise = (
        jax.random.normal(jax.random.key(7), x_a.shape)
        * jnp.asarray(np.concatenate([np.zeros(REF), far]))[None, :, None]
    )
    base_v, _ = apply(x_v, x_a)
    moved_v, _ = apply(x_v, x_a + 3.0 * noise)
    first = np.abs(_frame(moved_v, 0) - _frame(base_v, 0)).max()
    last = np.abs(_frame(moved_v, FRAMES - 1) - _frame(base_v, FRAMES - 1)).max()
    assert last > 1e-3, "the perturbation must reach the frames whose band holds it"
    if mode == "gldi":
        assert first == 0.0
    else:
        assert first > 1e-3


def test_reference_tokens_read_the_whole_video(trained):
    """GLDI's reference-audio tokens (the timbre) attend to every video frame, the first as the
    last; the baseline has no reference path and passes them through unchanged."""
    mode, (apply, x_v, x_a, _) = trained
    _, base_a = apply(x_v, x_a)
    for i in (0, FRAMES - 1):
        frame = np.zeros((1, x_v.shape[1], 1), np.float32)
        frame[:, i * TOKENS_PER_FRAME : (i + 1) * TOKENS_PER_FRAME] = 3.0  # (not a constant
        bump = frame * jax.random.normal(jax.random.key(i), x_v.shape)  # shift: LayerNorm'd away)
        _, moved_a = apply(x_v + bump, x_a)
        change = np.abs(np.asarray(moved_a[:, :REF] - base_a[:, :REF])).max()
        if mode == "gldi":
            assert change > 1e-3, i
        else:
            assert change == 0.0
    if mode == "global":
        np.testing.assert_array_equal(np.asarray(base_a[:, :REF]), np.asarray(x_a[:, :REF]))


def test_scanned_layers_equal_the_same_weights_unrolled():
    cfg = dataclasses.replace(_config("gldi"), depth=2, remat="dots")
    inputs = example_inputs(
        cfg,
        batch=1,
        video_frames=4,
        height=4,
        width=4,
        audio_frames=16,
        audio_rate=AUDIO_RATE,
        ref_frames=2,
    )
    scanned = HarmonyDiT(cfg)
    params = scanned.init(jax.random.key(3), *inputs)["params"]
    # nonzero interaction and heads, so every layer's every path contributes
    params = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), params
    )
    stack = params.pop("layers")
    unrolled_params = dict(params)
    for i in range(cfg.depth):
        unrolled_params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stack)
    params["layers"] = stack
    unrolled = HarmonyDiT(dataclasses.replace(cfg, scan_layers=False))
    want_v, want_a = jax.jit(scanned.apply)({"params": params}, *inputs)
    got_v, got_a = jax.jit(unrolled.apply)({"params": unrolled_params}, *inputs)
    np.testing.assert_allclose(np.asarray(got_v), np.asarray(want_v), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_a), np.asarray(want_a), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(want_v)).max() > 0.1  # the layers are not the identity
