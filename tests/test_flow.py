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
    np.testing.assert_allclose(flow.sigma_schedule(4, 1.0), [1.0, 0.75, 0.5, 0.25, 0.0],
                               atol=1e-7)
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
