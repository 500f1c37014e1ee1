"""Learning-rate schedules and the freeze mask of `config.optim`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmony_jax.defaults import base_config
from harmony_jax.training.optim import learning_rate, make_optimizer


def _optim(**kw):
    c = base_config().optim
    c.update({"lr": 1e-3, "warmup_steps": 10, **kw})
    return c


def test_constant_schedule_warms_up_then_holds():
    lr = learning_rate(_optim(), total_steps=100)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == float(lr(99)) == pytest.approx(1e-3)


def test_cosine_schedule_decays_to_the_end_fraction():
    lr = learning_rate(_optim(schedule="cosine", end_lr_fraction=0.02), total_steps=110)
    values = np.array([float(lr(s)) for s in range(10, 111)])
    assert values[0] == pytest.approx(1e-3)
    assert np.all(np.diff(values) <= 1e-12)  # monotone after warmup
    assert values[-1] == pytest.approx(2e-5)
    assert float(lr(60)) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5), rel=1e-5)  # halfway


def test_bad_schedules_name_the_key():
    with pytest.raises(ValueError, match="optim.schedule='cosin'"):
        learning_rate(_optim(schedule="cosin"), total_steps=100)
    with pytest.raises(ValueError, match=r"total_steps \(10\) > optim.warmup_steps \(10\)"):
        learning_rate(_optim(schedule="cosine"), total_steps=10)


def test_freeze_mask_keeps_matching_parameters():
    params = {"dit": {"video": {"w": jnp.ones(2)}, "audio": {"w": jnp.ones(2)}}}
    tx = make_optimizer(_optim(freeze="^dit/video", warmup_steps=0), params, total_steps=10)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert np.all(np.asarray(updates["dit"]["video"]["w"]) == 0.0)
    assert np.all(np.asarray(updates["dit"]["audio"]["w"]) != 0.0)
