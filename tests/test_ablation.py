"""The ablation ladder's machinery: shared trainings, cached evaluations, table and plot."""

import json
import os

import numpy as np
import pytest

from configs import tiny
from harmony_jax.eval import ablation
from harmony_jax.eval.ablation import (
    LADDER,
    Ladder,
    Variant,
    format_table,
    run_ladder,
    with_overrides,
)


def _tiny():
    return with_overrides(tiny.get_config(), (("total_steps", 2), ("sample.steps", 2)))


def test_overrides_copy_and_refuse_unknown_keys():
    base = _tiny()
    changed = with_overrides(base, (("model.interaction.mode", "global"), ("cts.lambda_v", 1.0)))
    assert changed.model.interaction.mode == "global" and base.model.interaction.mode == "gldi"
    with pytest.raises(KeyError, match="model.interaction.windw"):
        with_overrides(base, (("model.interaction.windw", 1.0),))


def test_every_rung_and_extra_is_a_valid_config():
    base = _tiny()
    for v in LADDER + ablation.extra_variants():
        config = with_overrides(base, v.train)
        assert set(dict(v.sample)) <= set(config.sample) | {"guidance"}
    assert LADDER[3].train == LADDER[4].train  # SyncCFG reuses the CTS training


def test_ladder_shares_trainings_caches_evaluations_and_reports(tmp_path, monkeypatch):
    base = _tiny()
    variants = (
        LADDER[3],
        Variant(
            "SyncCFG s_v=1, s_a=1",
            LADDER[4].train,
            (("guidance", "syncfg"), ("s_v", 1.0), ("s_a", 1.0)),
            extra=True,
        ),
    )
    ladder = Ladder(base, str(tmp_path), num_clips=2, curve_every=1)
    stats, curves = run_ladder(ladder, (0,), variants)
    runs = sorted(os.listdir(tmp_path))
    assert len([r for r in runs if r.startswith("train-")]) == 1  # one training for both
    assert set(stats) == {v.name for v in variants}
    for row in stats.values():
        mean, std = row["t2av_f1"]
        assert 0.0 <= mean <= 1.0 and std == 0.0
    assert [s for s, _ in curves["+ Cross-Task Synergy"][0]] == [1, 2]  # every checkpoint
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["curves"]["+ Cross-Task Synergy"][0][-1][1]
        == saved["per_seed"]["+ Cross-Task Synergy"][0]["t2av_f1"]
    )

    # A rerun reads everything back: nothing trains or samples again.
    fail = lambda *a, **k: pytest.fail("a cached ladder trained or evaluated again")
    monkeypatch.setattr(ablation, "train", fail)
    monkeypatch.setattr(ablation, "evaluate_sync", fail)
    np.testing.assert_equal(run_ladder(ladder, (0,), variants)[0], stats)  # nan == nan here

    table = format_table(stats, variants)
    assert "+ Cross-Task Synergy" in table and "not ablated in the paper" in table
    png = tmp_path / "ablation.png"
    ablation.plot(stats, variants, curves, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_spread_and_rung_direction():
    assert ablation.mean_std([0.2, 0.4, float("nan")]) == pytest.approx((0.3, 0.1414), abs=1e-4)
    assert ablation._direction((0.2, 0.01), (0.3, 0.02)) == "up +0.100"
    assert ablation._direction((0.3, 0.1), (0.25, 0.02)) == "down -0.050 (within spread)"
