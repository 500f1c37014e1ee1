"""The demo's world trained longer: 4800 steps of batch 8 (2.8x the demo's samples, ~25 min on
2 CPU cores at ~3.4 steps/s), where every mode is above chance (README, the demo's curve)."""

import os

from harmony_jax.config_cli import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "demo.py"))
    c.batch_size = 8
    c.total_steps = 4800
    c.checkpoint_every = 800
    c.keep_checkpoints = 6  # every checkpoint, for bench/demo_curve.py
    c.optim.update(lr=2e-3, warmup_steps=50, ema_decay=0.99)
    return c
