"""Tiny config for tests: every code path, seconds on a CPU."""

from harmony_jax.defaults import base_config


def get_config():
    c = base_config()
    c.total_steps = 4
    c.checkpoint_every = 2
    c.log_every = 1
    c.batch_size = 8  # divisible by the 8 simulated test devices
    c.data.num_frames = 8
    c.data.fps = 4.0
    c.data.height = 16
    c.data.width = 16
    c.data.num_clips = 64
    c.sample.steps = 4
    c.optim.warmup_steps = 1
    return c
