"""The optimizer of `config.optim`: AdamW with linear warmup, clipping and a freeze mask."""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "cosine")
ON_NONFINITE = ("skip", "halt")  # config.optim.on_nonfinite: the loop drops the update or stops


def learning_rate(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then constant (the paper fine-tunes at a constant 1e-5) or a cosine
    decay to `lr * end_lr_fraction` at `total_steps` (short from-scratch runs sample far better
    from weights that have settled)."""
    warmup, lr = int(optim_cfg.warmup_steps), float(optim_cfg.lr)
    if optim_cfg.schedule not in SCHEDULES:
        raise ValueError(
            f"config.optim.schedule={optim_cfg.schedule!r}: expected one of {SCHEDULES}"
        )
    if optim_cfg.schedule == "cosine":
        if total_steps <= warmup:
            raise ValueError(
                f"config.optim.schedule='cosine' needs total_steps ({total_steps}) "
                f"> optim.warmup_steps ({warmup})"
            )
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, total_steps, end_value=lr * float(optim_cfg.end_lr_fraction)
        )
    if warmup <= 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )


def trainable_labels(params: Any, freeze_regex: str) -> Any:
    """'frozen' for every parameter whose path ('dit/layers/video_block/...') matches the regex."""
    pattern = re.compile(freeze_regex) if freeze_regex else None

    def label(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return "frozen" if pattern is not None and pattern.search(name) else "trained"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim_cfg, params: Any, total_steps: int) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate(optim_cfg, total_steps),
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        weight_decay=optim_cfg.weight_decay,
    )
    tx = (
        optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), adamw)
        if optim_cfg.grad_clip > 0
        else adamw
    )
    if not optim_cfg.freeze:
        return tx
    labels = trainable_labels(params, optim_cfg.freeze)
    if "trained" not in jax.tree.leaves(labels):
        raise ValueError(f"config.optim.freeze={optim_cfg.freeze!r} freezes every parameter")
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
