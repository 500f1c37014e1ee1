"""Rectified-flow maths: the noising path, its velocity, the shift and the sampling schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmony_jax.diffusion import flow


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_schedule_endpoints_and_monotone(shift):
    s = np.asarray(flow.sigma_schedule(10, shift))
    assert s.shape == (11,)
    assert s[0] == 1.0 and s[-1] == 0.0
    assert np.all(np.diff(s) < 0)


def test_shift_one_is_identity_and_shift_raises_noise():
    u = jnp.linspace(0.0, 1.0, 7)
    np.testing.assert_allclose(flow.shift_sigma(u, 1.0), u, rtol=0, atol=1e-7)
    np.testing.assert_allclose(flow.sigma_schedule(4, 1.0), [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)
    assert np.all(np.asarray(flow.shift_sigma(u[1:-1], 5.0)) > np.asarray(u[1:-1]))
    np.testing.assert_allclose(flow.shift_sigma(0.5, 5.0), 2.5 / 3.0, rtol=1e-6)


def test_training_sigmas_are_shifted_uniforms():
    rng = jax.random.PRNGKey(0)
    u = jax.random.uniform(rng, (64,), jnp.float32)
    s = flow.sample_training_sigmas(rng, (64,), 5.0)
    np.testing.assert_allclose(s, 5.0 * u / (1.0 + 4.0 * u), rtol=1e-6)
    assert np.all((np.asarray(s) >= 0) & (np.asarray(s) <= 1))


def test_noise_path_and_velocity():
    x0 = jnp.arange(12.0).reshape(2, 3, 2)  # [B, T, C]
    e = jnp.ones_like(x0)
    sigma = jnp.array([[0.0, 0.5, 1.0], [0.25, 0.25, 0.25]])  # per-frame [B, T]
    xt = flow.add_noise(x0, e, sigma)
    np.testing.assert_allclose(xt, (1 - sigma[..., None]) * x0 + sigma[..., None] * e)
    np.testing.assert_array_equal(xt[0, 0], x0[0, 0])  # sigma 0 is exactly clean
    np.testing.assert_allclose(flow.add_noise(x0, e, jnp.array([1.0, 1.0])), e)  # per-sample
    v = flow.velocity_target(x0, e)
    # The velocity is d x_t / d sigma: a finite difference along the path recovers it.
    np.testing.assert_allclose(flow.add_noise(x0, e, sigma + 0.1) - xt, 0.1 * v, atol=1e-5)
    assert float(flow.timestep(jnp.float32(0.25))) == 250.0


def test_x0_denoiser_turns_an_exact_clean_prediction_into_the_velocity_target():
    kv, ka, ev, ea = jax.random.split(jax.random.PRNGKey(3), 4)
    x0_v, x0_a = jax.random.normal(kv, (2, 4, 2, 2, 3)), jax.random.normal(ka, (2, 5, 6))
    noise_v, noise_a = jax.random.normal(ev, x0_v.shape), jax.random.normal(ea, x0_a.shape)
    # per-frame sigmas, including clean frames (0) and some below the clip
    sigma_v = jnp.asarray([[0.0, 0.02, 0.5, 1.0], [0.3, 0.3, 0.9, 0.05]])
    sigma_a = jnp.asarray([[0.0, 0.1, 0.2, 0.7, 1.0], [0.04, 0.5, 0.5, 0.5, 0.6]])
    x_v, x_a = flow.add_noise(x0_v, noise_v, sigma_v), flow.add_noise(x0_a, noise_a, sigma_a)
    oracle = lambda v, a, tv, ta, cond: (x0_v, x0_a)  # the network's clean prediction
    v_v, v_a = flow.x0_denoiser(oracle)(
        x_v, x_a, flow.timestep(sigma_v), flow.timestep(sigma_a), None
    )
    for v, x, x0, noise, sigma in (
        (v_v, x_v, x0_v, noise_v, sigma_v),
        (v_a, x_a, x0_a, noise_a, sigma_a),
    ):
        s = np.asarray(sigma).reshape(sigma.shape + (1,) * (x0.ndim - 2))
        s = np.broadcast_to(s, x0.shape)
        # where sigma >= the clip: exactly the flow-matching target e - x0
        np.testing.assert_allclose(
            np.asarray(v)[s >= flow.X0_MIN_SIGMA],
            np.asarray(flow.velocity_target(x0, noise))[s >= flow.X0_MIN_SIGMA],
            rtol=1e-4,
            atol=1e-4,
        )
        # below it: (x_t - x0) / clip, so a clean frame (x_t = x0) gets exactly zero
        below = s < flow.X0_MIN_SIGMA
        np.testing.assert_allclose(
            np.asarray(v)[below],
            (np.asarray(x) - np.asarray(x0))[below] / flow.X0_MIN_SIGMA,
            rtol=1e-4,
            atol=1e-5,
        )
        assert np.all(np.asarray(v)[s == 0] == 0)


def test_logit_normal_sigmas_gather_at_mid_noise():
    rng = jax.random.PRNGKey(0)
    uniform = np.asarray(flow.sample_training_sigmas(rng, (4096,), 1.0))
    logit = np.asarray(flow.sample_training_sigmas(rng, (4096,), 1.0, "logit_normal"))
    middle = lambda s: np.mean((s > 0.25) & (s < 0.75))
    assert middle(logit) > 0.65 > 0.55 > middle(uniform)  # ~0.68 vs 0.5
    assert (
        np.median(np.asarray(flow.sample_training_sigmas(rng, (4096,), 3.0, "logit_normal"))) > 0.7
    )
    with pytest.raises(ValueError, match="logit_normal"):
        flow.sample_training_sigmas(rng, (4,), 1.0, "normal")


@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.8])
def test_frame_noise_has_unit_variance_and_the_asked_correlation_between_frames(correlation):
    noise = np.asarray(flow.frame_noise(jax.random.key(0), (64, 6, 8, 8, 3), correlation))
    assert abs(noise.std() - 1.0) < 0.03
    frames = noise.transpose(1, 0, 2, 3, 4).reshape(6, -1)  # [T, everything else]
    between = np.corrcoef(frames)[np.triu_indices(6, 1)]
    assert np.all(np.abs(between - correlation) < 0.04)  # 12288 pairs: std ~0.009
    with pytest.raises(ValueError, match="correlation 1.0"):
        flow.frame_noise(jax.random.key(0), (1, 2, 3), 1.0)


def test_the_sampler_starts_from_the_frame_noise_the_model_was_trained_on():
    """A zero velocity field leaves the initial noise as it is: the sample is that noise."""
    from test_cts import TA, TV, make_cond

    from harmony_jax.diffusion.sampler import sample

    still = lambda video, audio, t_v, t_a, cond: (jnp.zeros_like(video), jnp.zeros_like(audio))
    b, tv, ta = 16, TV, TA
    cond = make_cond(b)
    for correlation in (0.0, 0.8):
        video, _ = sample(
            still, jax.random.key(1), cond, video_shape=(b, tv, 8, 8, 3), audio_shape=(b, ta, 4),
            guidance="none", steps=2, noise_correlation=correlation,
        )  # fmt: skip
        video = np.asarray(video)
        r = np.corrcoef(video[:, 0].ravel(), video[:, 1].ravel())[0, 1]
        assert abs(r - correlation) < 0.05


def test_a_frame_noise_correlation_outside_its_range_is_named():
    from configs import tiny
    from harmony_jax.config_check import check_config
    from harmony_jax.errors import ConfigError
    from harmony_jax.system import build_system

    config = tiny.get_config()
    config.flow.frame_noise_correlation = 1.0
    with pytest.raises(ConfigError, match=r"config.flow.frame_noise_correlation=1.0: expected"):
        check_config(config)
    config.model.video.rope_theta = 0.5
    config.flow.frame_noise_correlation = 0.0
    with pytest.raises(ConfigError, match=r"config.model.video.rope_theta=0.5: expected"):
        check_config(config)
    config.model.video.rope_theta = 10000.0
    config.flow.frame_noise_correlation = 0.5
    assert build_system(config).frame_noise_correlation == 0.5
