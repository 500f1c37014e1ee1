"""Diffusion maths: the rectified flow (`flow`), the Cross-Task-Synergy training loss (`cts`),
SyncCFG guidance (`syncfg`) and the ODE sampler that applies it (`sampler`). All functions take
the denoiser contract of `harmony_jax.model.conditioning` as a plain callable, so they test with
stubs and run under jit."""

from harmony_jax.diffusion.cts import cts_loss, task_sizes
from harmony_jax.diffusion.flow import (
    add_noise,
    sample_training_sigmas,
    shift_sigma,
    sigma_schedule,
    timestep,
    velocity_target,
)
from harmony_jax.diffusion.sampler import sample

__all__ = [
    "add_noise",
    "cts_loss",
    "sample",
    "sample_training_sigmas",
    "shift_sigma",
    "sigma_schedule",
    "task_sizes",
    "timestep",
    "velocity_target",
]
