"""Rectified flow as in Wan: `x_t = (1 - s) x0 + s e`, the model predicts `v = e - x0`.

`s` (sigma) runs from 0 (clean) to 1 (pure noise); the model sees the timestep `1000 * s`.
Training sigmas are `U(0, 1)` pushed towards noise by the timestep shift, and the sampling
schedule is the same shift applied to an even grid, so training and sampling agree.

The network may instead output the clean sample (`x0_denoiser`, Li & He 2025, "Back to Basics:
Let Denoising Generative Models Denoise"): its velocity `(x_t - x0) / s` is what the loss and
the sampler see, so everything downstream is unchanged. Why: predicting v, a small network
over raw pixels must also reproduce the noise it is given, exactly; the clean image is
low-dimensional and need not carry it. Wan's towers predict v, so imports keep 'velocity'.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from harmony_jax.model.conditioning import Conditioning

TIMESTEP_SCALE = 1000.0

# The velocity field both the loss and the sampler drive (contract in model/conditioning.py):
# (video, audio, t_video, t_audio, cond) -> (v_video, v_audio).
Denoiser = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array, Conditioning], tuple[jax.Array, jax.Array]
]


def shift_sigma(u: jax.Array, shift: float) -> jax.Array:
    """Maps [0, 1] onto itself, fixing both ends; shift > 1 spends more time at high noise."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def timestep(sigma: jax.Array) -> jax.Array:
    """The timestep the denoiser is conditioned on."""
    return TIMESTEP_SCALE * sigma


SIGMA_SAMPLINGS = ("uniform", "logit_normal")


def sample_training_sigmas(
    rng: jax.Array, shape: tuple[int, ...], shift: float, sampling: str = "uniform"
) -> jax.Array:
    """One sigma per sample: `shift_sigma(u, shift)` with `u ~ U(0, 1)` or, 'logit_normal'
    (SD3), `u = sigmoid(N(0, 1))`: most draws at mid noise, where layout and timing are decided,
    few at the ends, where the clean image or the noise alone answers."""
    if sampling == "logit_normal":
        u = jax.nn.sigmoid(jax.random.normal(rng, shape, jnp.float32))
    elif sampling == "uniform":
        u = jax.random.uniform(rng, shape, jnp.float32)
    else:
        raise ValueError(f"sigma sampling {sampling!r} is not one of {SIGMA_SAMPLINGS}")
    return shift_sigma(u, shift)


def add_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """`x_t = (1 - s) x0 + s e`; `sigma` has a prefix of x0's shape ([B] or per-frame [B, T])."""
    s = jnp.reshape(sigma, sigma.shape + (1,) * (x0.ndim - sigma.ndim))
    return ((1.0 - s) * x0 + s * noise).astype(x0.dtype)


def frame_noise(rng: jax.Array, shape: tuple[int, ...], correlation: float = 0.0) -> jax.Array:
    """Video noise [B, T, ...] whose frames share a component: `sqrt(c) e_shared + sqrt(1 - c)
    e_frame`, unit variance per element, correlation `c` between any two frames (PYoCo's mixed
    prior, Ge et al. 2023). Why: with independent noise a model that has not yet learned to
    couple frames decides each frame's layout from that frame's noise alone; shared noise ties
    those decisions together (in the demo world at c = 0.8 it did not yet give one track: issue
    24). 0 is Wan's independent noise; training and sampling must agree."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"frame noise correlation {correlation} must be in [0, 1)")
    k_shared, k_frame = jax.random.split(rng)
    noise = jax.random.normal(k_frame, shape, jnp.float32)
    if correlation == 0.0:
        return noise
    shared = jax.random.normal(k_shared, (shape[0], 1, *shape[2:]), jnp.float32)
    return correlation**0.5 * shared + (1.0 - correlation) ** 0.5 * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The velocity `d x_t / d s = e - x0` the model learns."""
    return noise - x0


PREDICTIONS = ("velocity", "x0")
# what the loss averages: the squared error of the velocity (Wan's), or of the clean latents it
# implies, `sigma^2` times the velocity's: the near-clean frames, whose velocity is mostly the
# noise, no longer dominate the loss (a memorizer's velocity error there is not 0, its x0 is)
LOSSES = ("velocity", "x0")
X0_MIN_SIGMA = 0.05  # the velocity of an x0 prediction divides by max(sigma, this), as JiT does


def x0_denoiser(predict_x0: Denoiser, min_sigma: float = X0_MIN_SIGMA) -> Denoiser:
    """The velocity denoiser of a network that predicts clean latents: `v = (x_t - x0) / s`,
    with s clipped below at `min_sigma` (clean frames, s = 0, stay finite; nothing scores or
    integrates their velocity)."""

    def denoise(video, audio, t_video, t_audio, cond):
        x0_v, x0_a = predict_x0(video, audio, t_video, t_audio, cond)
        return _velocity(video, x0_v, t_video, min_sigma), _velocity(
            audio, x0_a, t_audio, min_sigma
        )

    return denoise


def _velocity(x_t: jax.Array, x0: jax.Array, t: jax.Array, min_sigma: float) -> jax.Array:
    sigma = jnp.maximum(t.astype(jnp.float32) / TIMESTEP_SCALE, min_sigma)  # [B, T]
    sigma = sigma.reshape(sigma.shape + (1,) * (x_t.ndim - sigma.ndim))
    return ((x_t.astype(jnp.float32) - x0.astype(jnp.float32)) / sigma).astype(x0.dtype)


def sigma_schedule(steps: int, shift: float) -> jax.Array:
    """[steps + 1] sigmas from exactly 1 down to exactly 0: a shifted even grid."""
    sigmas = shift_sigma(jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32), shift)
    return sigmas.at[0].set(1.0)  # shift * 1 / (1 + (shift - 1)) may round below 1
