"""SyncCFG sampler: eq. 9-10 with stub denoisers, one batched call, modes, solvers, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmony_jax.diffusion import flow
from harmony_jax.diffusion.sampler import sample
from harmony_jax.model.conditioning import Conditioning

B, TV, H, W, CV, TA, CA = 2, 3, 2, 2, 2, 5, 3
SHAPES = dict(video_shape=(B, TV, H, W, CV), audio_shape=(B, TA, CA))


def make_cond(b=B, scale=1.0):
    return Conditioning(
        video_text=scale * jnp.ones((b, 4, 8)),
        video_text_mask=jnp.ones((b, 4), bool),
        audio_text=scale * jnp.ones((b, 4, 8)),
        audio_text_mask=jnp.ones((b, 4), bool),
        transcript=jnp.ones((b, 6), jnp.int32),
        video_time=jnp.zeros((b, TV)),
        audio_time=jnp.zeros((b, TA)),
    )


def run(denoise, rng=0, cond=None, **kw):
    """`sample` under jit: arrays and conditionings traced, everything else static."""
    traced = {k: v for k, v in kw.items() if isinstance(v, (jax.Array, np.ndarray, Conditioning))}
    static = tuple(sorted((k, v) for k, v in kw.items() if k not in traced))
    f = _jitted(denoise, static)
    return f(jax.random.PRNGKey(rng), make_cond() if cond is None else cond, **traced)


@functools.cache
def _jitted(denoise, static):
    """One jitted sampler per static configuration, so repeated configs compile once."""
    return jax.jit(functools.partial(sample, denoise, **SHAPES, **dict(static)))


@pytest.fixture(scope="module")
def noise():
    """The sampler's initial noise for seed 0: what a zero velocity leaves unchanged."""
    return tuple(np.asarray(x) for x in run(zero_stub, guidance="none", steps=1))


def per_sample(x, ndim):
    """The per-sample mean of x, shaped [B', 1, ...] to broadcast against a rank-ndim array."""
    return x.reshape(x.shape[0], -1).mean(1).reshape((-1,) + (1,) * (ndim - 1))


def linear_stub(video, audio, t_v, t_a, cond):
    """Each output depends on the other modality's latent and timesteps, so passes differ."""
    v_v = video + 0.5 * per_sample(audio, 5) - 0.25 * per_sample(t_a, 5) / 1000
    v_a = (
        audio
        + 0.75 * per_sample(video, 3)
        + 0.125 * per_sample(t_v, 3) / 1000
        + per_sample(cond.video_text, 3)
    )
    return v_v, v_a


def zero_stub(video, audio, t_v, t_a, cond):
    return jnp.zeros_like(video), jnp.zeros_like(audio)


def np_syncfg_velocity(z_v, z_a, sigma, anchor, silent, s_v, s_a):
    """Eq. 9-10 written out: three stub evaluations, then the guided combination."""
    stub = lambda v, a, tv, ta: [
        np.asarray(x)
        for x in linear_stub(v, a, np.full((B, TV), tv), np.full((B, TA), ta), make_cond())
    ]
    j_v, j_a = stub(z_v, z_a, 1000 * sigma, 1000 * sigma)
    d_v, _ = stub(z_v, silent, 1000 * sigma, 0.0)
    _, d_a = stub(np.broadcast_to(anchor, z_v.shape), z_a, 0.0, 1000 * sigma)
    return d_v + s_v * (j_v - d_v), d_a + s_a * (j_a - d_a)


def test_syncfg_equals_eq_9_10_with_refreshed_anchor(noise):
    # Two Euler steps at shift 1 (sigmas 1, 0.5, 0): the anchor is zeros, then the first frame
    # of x0 = z - sigma * v_vid from step one.
    silent = np.full((1, TA, CA), 0.5, np.float32)
    z_v, z_a = noise
    kw = dict(steps=2, shift=1.0, s_v=3.0, s_a=2.0)
    out_v, out_a = run(linear_stub, silent_audio=silent, **kw)
    anchor = np.zeros((B, 1, H, W, CV), np.float32)
    for sigma, dt in [(1.0, -0.5), (0.5, -0.5)]:
        v_v, v_a = np_syncfg_velocity(z_v, z_a, sigma, anchor, silent, kw["s_v"], kw["s_a"])
        anchor = z_v[:, :1] - sigma * v_v[:, :1]
        z_v, z_a = z_v + dt * v_v, z_a + dt * v_a
    np.testing.assert_allclose(out_v, z_v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_a, z_a, rtol=1e-5, atol=1e-5)


def test_scale_one_reduces_to_joint_prediction():
    kw = dict(steps=3, shift=5.0, solver="heun")
    joint = run(linear_stub, guidance="none", **kw)
    scales = lambda s: dict(s_v=jnp.float32(s), s_a=jnp.float32(s))  # traced: one compile
    guided = run(linear_stub, guidance="syncfg", **scales(1.0), **kw)
    assert not np.allclose(run(linear_stub, guidance="syncfg", **scales(3.0), **kw)[0], joint[0])
    for g, j in zip(guided, joint):
        np.testing.assert_allclose(g, j, rtol=1e-5, atol=1e-5)


def test_text_cfg_combination():
    # One Euler step from sigma 1: out = z - v. The stub's text term is 1 for cond and 0 for
    # uncond on audio only, so video equals the unguided result and audio moves by
    # -(cfg_scale - 1) * (c_a - u_a) = -4.
    plain = run(linear_stub, guidance="none", steps=1)
    video, audio = run(
        linear_stub,
        guidance="cfg",
        steps=1,
        cfg_scale=jnp.float32(5.0),
        uncond=make_cond(scale=0.0),
    )
    np.testing.assert_allclose(video, plain[0], atol=1e-5)
    np.testing.assert_allclose(audio, plain[1] - 4.0, atol=1e-5)


@pytest.mark.parametrize(
    "mode,guidance,solver,calls",
    [
        ("t2av", "syncfg", "euler", [3 * B]),
        ("t2av", "syncfg", "heun", [3 * B] * 3),  # predictor, corrector, final Euler step
        ("a2v", "syncfg", "euler", [2 * B]),  # no audio is generated: no video-driven pass
        ("v2a", "cfg", "euler", [2 * B]),
        ("t2av", "none", "euler", [B]),
    ],
)
def test_passes_are_one_batched_call(mode, guidance, solver, calls):
    seen = []

    def counting_stub(video, audio, t_v, t_a, cond):
        seen.append((video.shape[0], audio.shape[0], t_v.shape[0], t_a.shape[0], cond.batch_size))
        return zero_stub(video, audio, t_v, t_a, cond)

    given = dict(
        a2v=dict(given_audio=jnp.ones((B, TA, CA))),
        v2a=dict(given_video=jnp.ones((B, TV, H, W, CV))),
    ).get(mode, {})
    f = functools.partial(
        sample,
        counting_stub,
        **SHAPES,
        mode=mode,
        guidance=guidance,
        solver=solver,
        steps=5,
        uncond=make_cond(scale=0.0),
        **given,
    )
    jax.make_jaxpr(f)(jax.random.PRNGKey(0), make_cond())  # traces the loop body once
    assert seen == [(n,) * 5 for n in calls]


def test_deterministic_per_seed():
    a, b, c = (run(linear_stub, rng=r, steps=3) for r in (7, 7, 8))
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        assert not np.allclose(x, z)


@pytest.mark.parametrize("mode", ["a2v", "v2a", "ti2av"])
def test_given_inputs_are_returned_exactly(mode):
    k1, k2 = jax.random.split(jax.random.PRNGKey(5))
    given_video = jax.random.normal(k1, SHAPES["video_shape"])
    given_audio = jax.random.normal(k2, SHAPES["audio_shape"])
    kw = dict(steps=3, solver="heun" if mode == "ti2av" else "euler")
    if mode == "a2v":
        video, audio = run(linear_stub, mode=mode, given_audio=given_audio, **kw)
        np.testing.assert_array_equal(audio, given_audio)
        assert np.all(np.isfinite(video)) and not np.allclose(video[:, 0], 0)
    elif mode == "v2a":
        video, audio = run(linear_stub, mode=mode, given_video=given_video, **kw)
        np.testing.assert_array_equal(video, given_video)
    else:
        ref = given_video[:, :1]
        video, audio = run(linear_stub, ref_image=ref, **kw)
        np.testing.assert_array_equal(video[:, :1], ref)
        assert not np.allclose(video[:, 1:], given_video[:, 1:])


def test_solvers_converge_and_timestep_is_1000_sigma(noise):
    # Video: dz/dsigma = a z from sigma 1 to 0, exactly z(0) = exp(-a) z(1). Audio: v = t / 1000
    # = sigma, so z(0) = z(1) + sum over steps of dt * (the sigmas the solver evaluates at).
    a = 1.5

    def stub(video, audio, t_v, t_a, cond):
        return a * video, jnp.broadcast_to(t_a[:, :, None] / 1000, audio.shape)

    exact = np.exp(-a) * noise[0]
    err = {}
    for solver in ("euler", "heun"):
        for n in (8, 16):
            video, audio = run(stub, guidance="none", steps=n, shift=1.0, solver=solver)
            err[solver, n] = np.abs(video - exact).max()
            s = np.asarray(flow.sigma_schedule(n, 1.0), np.float64)
            dt = np.diff(s)
            drift = (
                np.sum(dt * s[:-1])
                if solver == "euler"
                else np.sum(dt[:-1] * (s[:-2] + s[1:-1]) / 2) + dt[-1] * s[-2]
            )
            np.testing.assert_allclose(audio - noise[1], drift, atol=1e-5)
    assert 1.5 < err["euler", 8] / err["euler", 16] < 2.5  # first order
    assert 3.0 < err["heun", 8] / err["heun", 16] < 5.0  # second order
    assert err["heun", 16] < 0.1 * err["euler", 16]


def test_argument_errors_name_the_problem():
    with pytest.raises(ValueError, match="'t2av', 'a2v', 'v2a'"):
        run(zero_stub, mode="i2v")
    with pytest.raises(ValueError, match="given_audio is required"):
        run(zero_stub, mode="a2v")
    with pytest.raises(ValueError, match="uncond"):
        run(zero_stub, guidance="cfg")
    with pytest.raises(ValueError, match="ref_image has shape"):
        run(zero_stub, ref_image=jnp.zeros((B, TV, H, W, CV)))
    with pytest.raises(ValueError, match="silent_audio has shape"):
        run(zero_stub, silent_audio=jnp.zeros((B, TA + 1, CA)))
