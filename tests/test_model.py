"""The joint DiT: shapes, the paper-size parameter count, zero-init decoupling, band mask, RoPE."""

import dataclasses
import fractions

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from einops import rearrange

from configs import harmony_5b, tiny
from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.model.dit import num_params
from harmony_jax.model.inputs import example_inputs
from harmony_jax.model.interaction import band_mask, cross_modal_geometry
from harmony_jax.model.rope import apply_rope, axis_split, video_grid_angles

VIDEO_FPS, AUDIO_RATE = 4.0, 62.5
GEOMETRY = dict(batch=2, video_frames=4, height=8, width=8, audio_frames=16, audio_rate=AUDIO_RATE)


def tiny_model_config(**model_overrides) -> ModelConfig:
    cfg = ModelConfig.from_config(tiny.get_config().model, video_latent_rate=VIDEO_FPS)
    return dataclasses.replace(cfg, **model_overrides)


@pytest.fixture(scope="module")
def tiny_setup():
    cfg = tiny_model_config()
    model = HarmonyDiT(cfg)
    inputs = example_inputs(cfg, **GEOMETRY, ref_frames=3)
    params = jax.jit(model.init)(jax.random.key(1), *inputs)
    return cfg, model, params, inputs


def test_shapes_and_dtypes(tiny_setup):
    cfg, model, params, inputs = tiny_setup
    out_v, out_a = jax.jit(model.apply)(params, *inputs)
    assert out_v.shape == inputs[0].shape and out_v.dtype == jnp.float32
    assert out_a.shape == inputs[1].shape and out_a.dtype == jnp.float32
    assert np.isfinite(np.asarray(out_v)).all() and np.isfinite(np.asarray(out_a)).all()
    leaves = jax.tree.leaves(params)
    assert all(x.dtype == jnp.float32 for x in leaves)
    # every parameter carries logical axis names
    boxed = jax.eval_shape(model.init, jax.random.key(1), *inputs)
    for path, leaf in jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    ):
        assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)


def test_bfloat16_compute_keeps_float32_params():
    cfg = tiny_model_config(dtype=jnp.bfloat16, remat="full")
    inputs = example_inputs(cfg, **GEOMETRY)
    model = HarmonyDiT(cfg)
    params = jax.jit(model.init)(jax.random.key(0), *inputs)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out_v, out_a = jax.jit(model.apply)(params, *inputs)
    assert out_v.dtype == jnp.float32 and np.isfinite(np.asarray(out_v)).all()


def test_paper_video_tower_matches_wan22_ti2v_5b_parameter_count():
    """Same count as diffusers' WanTransformer3DModel for the Wan2.2-TI2V-5B config."""
    cfg = ModelConfig.from_config(harmony_5b.get_config().model, video_latent_rate=6.0)
    inputs = example_inputs(
        cfg,
        batch=1,
        video_frames=2,
        height=4,
        width=4,
        audio_frames=8,
        audio_rate=31.25,
        abstract=True,
    )
    params = jax.eval_shape(HarmonyDiT(cfg).init, jax.random.key(0), *inputs)
    params = nn.meta.unbox(params)["params"]
    video = num_params({k: v for k, v in params.items() if k.startswith("video")})
    video += num_params(params["layers"]["video_block"])
    assert video == 4_999_787_712
    assert num_params(params["layers"]["audio_block"]) == num_params(
        params["layers"]["video_block"]
    )


def _perturb(x, seed):
    return x + jax.random.normal(jax.random.key(seed), x.shape)


def test_zero_init_interaction_decouples_towers_until_trained(tiny_setup):
    cfg, model, params, inputs = tiny_setup
    video, audio, t_v, t_a, cond = inputs
    apply = jax.jit(model.apply)

    def cross_effects(p):
        base_v, base_a = apply(p, video, audio, t_v, t_a, cond)
        v_from_audio, _ = apply(p, video, _perturb(audio, 7), t_v, t_a, cond)
        _, a_from_video = apply(p, _perturb(video, 8), audio, t_v, t_a, cond)
        return (
            float(jnp.abs(v_from_audio - base_v).max()),
            float(jnp.abs(a_from_video - base_a).max()),
        )

    assert cross_effects(params) == (0.0, 0.0)

    def loss(p):
        out_v, out_a = model.apply(p, video, audio, t_v, t_a, cond)
        return jnp.mean((out_v - 1.0) ** 2) + jnp.mean((out_a - 1.0) ** 2)

    opt = optax.adam(1e-2)
    grads = jax.grad(loss)(params)
    updates, _ = opt.update(grads, opt.init(params), params)
    trained = optax.apply_updates(params, updates)
    v_dep, a_dep = cross_effects(trained)
    assert v_dep > 1e-6 and a_dep > 1e-6


def _brute_force_band(v_times, a_times, window_seconds):
    return np.array([[abs(tv - ta) <= window_seconds for ta in a_times] for tv in v_times])


@pytest.mark.parametrize(
    "fps,audio_rate,num_v,num_a,window_frames",
    [
        (8, fractions.Fraction(125, 2), 16, 125, 2),  # non-integer rate ratio (62.5 / 8)
        (8, 16, 16, 32, 2),  # exact edges: many pairs exactly `window` apart
        (24, fractions.Fraction(125, 4), 31, 157, 1),  # Wan-like 24 fps vs MMAudio 31.25 Hz
    ],
)
def test_band_mask_matches_brute_force(fps, audio_rate, num_v, num_a, window_frames):
    v_exact = [fractions.Fraction(2 * i + 1, 2) / fps for i in range(num_v)]
    a_exact = [fractions.Fraction(2 * j + 1, 2) / audio_rate for j in range(num_a)]
    window = fractions.Fraction(window_frames) / fps
    expected = _brute_force_band(v_exact, a_exact, window)
    got = band_mask(
        jnp.asarray([[float(t) for t in v_exact]]),
        jnp.asarray([[float(t) for t in a_exact]]),
        float(window),
    )[0]
    np.testing.assert_array_equal(np.asarray(got), expected)
    # boundary pairs exist in the exact-edge case and are inside the band
    on_edge = np.array([[abs(tv - ta) == window for ta in a_exact] for tv in v_exact])
    assert np.asarray(got)[on_edge].all()


def _cross_logits(cfg, shift_seconds):
    """Video->audio logits of constant q, k through the model's cross-modal RoPE geometry."""
    num_v, num_a = 16, 250  # 4 s at 4 fps / 62.5 Hz
    _, _, _, _, cond = example_inputs(
        cfg,
        batch=1,
        video_frames=num_v,
        height=2,
        width=2,
        audio_frames=num_a,
        audio_rate=AUDIO_RATE,
    )
    cond = cond.replace(
        video_time=cond.video_time + shift_seconds, audio_time=cond.audio_time + shift_seconds
    )
    geo = cross_modal_geometry(cfg, cond, num_v, 1, num_a)
    hd = cfg.video.head_dim
    q = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (hd,)), (1, num_v, 1, hd))
    k = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (hd,)), (1, num_a, 1, hd))
    q, k = apply_rope(q, geo.a2v_q), apply_rope(k, geo.a2v_k)
    return np.asarray(jnp.einsum("bqnd,bknd->qk", q, k))


def test_rope_alignment_makes_cross_modal_logits_depend_on_time_difference_only():
    # Same clip content 2 s later: video frame i+8 and audio frame j+125 are the pair (i, j).
    for rope_align, invariant in ((True, True), (False, False)):
        cfg = tiny_model_config(
            interaction=dataclasses.replace(tiny_model_config().interaction, rope_align=rope_align)
        )
        logits = _cross_logits(cfg, 0.0)
        early, late = logits[:8, :125], logits[8:16, 125:250]
        assert np.allclose(early, late, atol=1e-3) == invariant, rope_align
        # absolute shift of both streams: logits unchanged when aligned
        if rope_align:
            np.testing.assert_allclose(_cross_logits(cfg, 0.75), logits, atol=1e-3)


def test_global_interaction_baseline_runs():
    """(Unrolled layers are checked against scanned ones in test_mechanisms.)"""
    base = tiny_model_config()
    cfg = dataclasses.replace(
        base, interaction=dataclasses.replace(base.interaction, mode="global")
    )
    inputs = example_inputs(cfg, **GEOMETRY, ref_frames=2)
    model = HarmonyDiT(cfg)
    params = jax.jit(model.init)(jax.random.key(0), *inputs)
    out_v, out_a = jax.jit(model.apply)(params, *inputs)
    assert out_v.shape == inputs[0].shape and out_a.shape == inputs[1].shape
    assert "global" not in params["params"]["layers"]["interaction"]


def test_bad_shapes_name_the_problem(tiny_setup):
    cfg, model, params, inputs = tiny_setup
    video, audio, t_v, t_a, cond = inputs
    with pytest.raises(ValueError, match="video latents"):
        model.apply(params, video[..., :2], audio, t_v, t_a, cond)
    with pytest.raises(ValueError, match="per latent frame"):
        model.apply(params, video, audio, t_v[:, :1], t_a, cond)


@pytest.mark.parametrize("pos_embed", ["none", "sincos", "learned"])
def test_only_an_absolute_position_embedding_breaks_translation_equivariance(pos_embed):
    """A constant video at one noise level gives every patch position the same prediction
    without one (attention averages identical values, whatever RoPE does to the weights): the
    tower cannot tell a wall from the middle of the frame. With one, positions differ."""
    base = tiny_model_config()
    video_cfg = dataclasses.replace(base.video, pos_embed=pos_embed)
    cfg = dataclasses.replace(base, depth=1, video=video_cfg)
    video, audio, t_v, t_a, cond = example_inputs(cfg, **GEOMETRY)
    video = jnp.broadcast_to(video[:, :1, :1, :1], video.shape)  # one value per channel
    t_v = jnp.broadcast_to(t_v[:, :1], t_v.shape)
    model = HarmonyDiT(cfg)
    params = jax.jit(model.init)(jax.random.key(0), video, audio, t_v, t_a, cond)
    if pos_embed == "learned":  # its init is small: give it the spread training gives it
        table = params["params"]["video_pos_embed"]
        params["params"]["video_pos_embed"] = jax.tree.map(lambda x: x * 25.0, table)
    out_v, _ = jax.jit(model.apply)(params, video, audio, t_v, t_a, cond)
    _, ph, pw = cfg.video.patch
    patches = rearrange(np.asarray(out_v), "b t (h q) (w r) c -> b t (h w) (q r c)", q=ph, r=pw)
    spread = patches.std(axis=2).mean() / patches.std()  # across positions / overall
    if pos_embed == "none":
        assert spread < 1e-5
    else:
        assert spread > 0.1


def test_rope_theta_sets_how_many_spatial_bands_resolve_a_small_grid():
    """At Wan's base one spatial band of five turns an eighth of a turn across 4 patches; at 10,
    three do. The base is the model's: a layer's video angles follow `model.video.rope_theta`."""

    def bands(theta: float) -> int:
        angles = video_grid_angles(1, 4, 1, 32, theta)  # [4, 16]: height positions 0..3
        _, hh, _ = axis_split(32)
        height = angles[:, (32 - 2 * hh) // 2 : (32 - 2 * hh) // 2 + hh // 2]  # its bands
        return int(np.sum(height[-1] - height[0] >= np.pi / 4))

    assert bands(10000.0) == 1 and bands(10.0) == 3
    base = tiny_model_config()
    cfgs = [
        dataclasses.replace(base, depth=1, video=dataclasses.replace(base.video, rope_theta=t))
        for t in (10000.0, 10.0)
    ]
    video, audio, t_v, t_a, cond = example_inputs(cfgs[0], **GEOMETRY)
    params = jax.jit(HarmonyDiT(cfgs[0]).init)(jax.random.key(0), video, audio, t_v, t_a, cond)
    params = jax.tree.map(lambda x: x + 0.05, params)  # open the zero-initialised gates
    outs = [
        np.asarray(jax.jit(HarmonyDiT(c).apply)(params, video, audio, t_v, t_a, cond)[0])
        for c in cfgs
    ]
    assert np.abs(outs[0] - outs[1]).max() > 1e-4
