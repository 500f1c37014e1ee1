"""Cross-Task-Synergy loss (paper eq. 3-4): joint generation plus the two driven tasks.

Every task is the same flow-matching regression; what tells them apart are the per-frame
timesteps. The driving modality of a driven task is fed clean at timestep 0 and its output is
not scored, so one denoiser call serves all tasks at once:

    joint  (task 0)  both modalities noised with the same sigma    loss L_v + L_a
    a2v    (task 1)  audio clean, t_a = 0                          loss lambda_v * L_v
    v2a    (task 2)  video clean, t_v = 0                          loss lambda_a * L_a

Modes: 'split' gives each task a static, contiguous slice of the batch (rows [0, n_joint) are
joint, the next n_a2v audio-driven, the rest video-driven), 'all' runs the three tasks on every
sample (the batch tiled 3x, 3x the cost), 'joint_only' is the ablation baseline.

With `ref_image_prob` > 0 some samples also get the Wan2.2 TI2V treatment: their first video
latent frame is the clean frame at timestep 0 (the reference image) and is not scored.
"""

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.diffusion import flow
from harmony_jax.diffusion.flow import Denoiser
from harmony_jax.model.conditioning import Conditioning, concat_conditionings

MODES = ("split", "all", "joint_only")
JOINT, A2V, V2A = 0, 1, 2


def task_sizes(
    batch: int, mode: str, fractions: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Rows per task (joint, a2v, v2a) in the denoiser batch, fixed at trace time.

    'split' uses largest remainders: each task gets floor(batch * f / sum(f)) rows and the
    leftover rows go to the largest fractional parts, ties to the earlier task. So for the
    default (0.5, 0.25, 0.25): B=1 -> (1, 0, 0) (all joint), B=2 -> (1, 1, 0),
    B=3 -> (1, 1, 1), B=8 -> (4, 2, 2). A task left with no rows contributes nothing.
    'all' returns (batch, batch, batch); 'joint_only' returns (batch, 0, 0).
    """
    if mode == "all":
        return batch, batch, batch
    if mode == "joint_only":
        return batch, 0, 0
    if mode != "split":
        raise ValueError(f"cts mode {mode!r} is not one of {MODES}")
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(
            f"cts fractions {fractions!r} must be 3 non-negative numbers "
            "(joint, a2v, v2a) with a positive sum"
        )
    quotas = batch * f / f.sum()
    sizes = np.floor(quotas).astype(int)
    order = sorted(range(3), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in order[: batch - sizes.sum()]:
        sizes[i] += 1
    return tuple(int(n) for n in sizes)


def _masked_mse(
    pred: jax.Array, target: jax.Array, weight: jax.Array, scale: jax.Array | None = None
) -> jax.Array:
    """Mean squared error over the frames with weight 1; `weight` is [N, T], 0 if none.
    `scale` [N, T] multiplies each frame's error without changing the count."""
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    per_frame = sq.reshape(weight.shape + (-1,)).sum(-1)  # [N, T]
    count = weight.sum() * (sq.size // weight.size)
    scaled = weight if scale is None else weight * scale
    return (per_frame * scaled).sum() / jnp.maximum(count, 1.0)


def cts_loss(
    denoise: Denoiser,
    video0: jax.Array,
    audio0: jax.Array,
    cond: Conditioning,
    rng: jax.Array,
    *,
    mode: str = "split",
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
    lambda_v: float = 0.1,
    lambda_a: float = 0.3,
    shift: float = 5.0,
    ref_image_prob: float = 0.0,
    sigma_sampling: str = "uniform",
    loss: str = "velocity",
    noise_correlation: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The CTS loss of one batch of clean latents, with one denoiser call.

    video0 [B, Tv, H, W, C] and audio0 [B, Ta, Ca] are clean latents. Returns the scalar loss
    `L_joint_v + L_joint_a + lambda_v * L_a2v + lambda_a * L_v2a` (each term the MSE over the
    scored elements of its own task's rows) and metrics: `loss`, the unweighted terms
    `loss_joint_v`, `loss_joint_a`, `loss_a2v`, `loss_v2a` (0 for a task with no rows),
    `sigma_mean` and `ref_image_frac`. `mode` and `fractions` must be static under jit.
    `sigma_sampling` draws the noise levels (flow.SIGMA_SAMPLINGS); `loss` 'x0' weights each
    frame's velocity error by sigma^2 (flow.LOSSES). `noise_correlation`: between the video
    noise of any two frames (flow.frame_noise).
    """
    if loss not in flow.LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {flow.LOSSES}")
    batch = video0.shape[0]
    sizes = task_sizes(batch, mode, fractions)
    if mode == "all":
        video0 = jnp.concatenate([video0] * 3)  # [3B, Tv, H, W, C]
        audio0 = jnp.concatenate([audio0] * 3)  # [3B, Ta, Ca]
        cond = concat_conditionings([cond] * 3)
    n, tv, ta = video0.shape[0], video0.shape[1], audio0.shape[1]
    task = np.repeat([JOINT, A2V, V2A], sizes)  # [N] static
    k_sigma, k_video, k_audio, k_ref = jax.random.split(rng, 4)

    sigma = flow.sample_training_sigmas(k_sigma, (n,), shift, sigma_sampling)  # [N]
    ref = jax.random.bernoulli(k_ref, ref_image_prob, (n,))  # [N]
    first = jnp.arange(tv) == 0  # [Tv]
    video_noised = jnp.asarray(task != V2A)[:, None] & ~(ref[:, None] & first)  # [N, Tv]
    audio_noised = jnp.broadcast_to(jnp.asarray(task != A2V)[:, None], (n, ta))  # [N, Ta]
    sigma_v = jnp.where(video_noised, sigma[:, None], 0.0)  # [N, Tv]
    sigma_a = jnp.where(audio_noised, sigma[:, None], 0.0)  # [N, Ta]

    noise_v = flow.frame_noise(k_video, video0.shape, noise_correlation).astype(video0.dtype)
    noise_a = jax.random.normal(k_audio, audio0.shape, audio0.dtype)
    pred_v, pred_a = denoise(
        flow.add_noise(video0, noise_v, sigma_v),
        flow.add_noise(audio0, noise_a, sigma_a),
        flow.timestep(sigma_v),
        flow.timestep(sigma_a),
        cond,
    )
    target_v = flow.velocity_target(video0, noise_v)
    target_a = flow.velocity_target(audio0, noise_a)

    def term(pred, target, noised, sigmas, k):
        rows = jnp.asarray(task == k)[:, None]  # [N, 1]
        scale = jnp.square(sigmas) if loss == "x0" else None
        return _masked_mse(pred, target, (noised & rows).astype(jnp.float32), scale)

    metrics = {
        "loss_joint_v": term(pred_v, target_v, video_noised, sigma_v, JOINT),
        "loss_joint_a": term(pred_a, target_a, audio_noised, sigma_a, JOINT),
        "loss_a2v": term(pred_v, target_v, video_noised, sigma_v, A2V),
        "loss_v2a": term(pred_a, target_a, audio_noised, sigma_a, V2A),
    }
    loss = (
        metrics["loss_joint_v"]
        + metrics["loss_joint_a"]
        + lambda_v * metrics["loss_a2v"]
        + lambda_a * metrics["loss_v2a"]
    )
    metrics.update(
        loss=loss, sigma_mean=sigma.mean(), ref_image_frac=ref.astype(jnp.float32).mean()
    )
    return loss, metrics
