"""The wall-clock budget: the LR schedule follows the budget, training stops with it, resume
continues it."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.callbacks.budget import TimeBudget
from pretrain.config import ScheduleConfig
from pretrain.optim import lr_multiplier


def test_schedule_follows_whichever_is_further_steps_or_time():
    linear = ScheduleConfig(name="linear", warmup_fraction=0.1)
    # Warm-up is a fraction of the budget: 5% of the time spent -> half way up.
    assert lr_multiplier(0, linear, 1_000_000, time_fraction=0.05) == pytest.approx(0.5)
    # After warm-up, decay by time when time is ahead of the step count ...
    assert lr_multiplier(10, linear, 1_000_000, time_fraction=0.55) == pytest.approx(0.5)
    # ... and by steps when they are ahead (a fast machine reaching max_steps first).
    assert lr_multiplier(549_999, linear, 1_000_000, time_fraction=0.2) == pytest.approx(0.5)
    assert lr_multiplier(10, linear, 1_000_000, time_fraction=1.0) == 0.0
    floor = ScheduleConfig(name="polynomial", power=2.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(4, floor, 1000, time_fraction=0.9) == pytest.approx(0.5)  # warm-up steps
    assert lr_multiplier(20, floor, 1000, time_fraction=0.5) == pytest.approx(0.1 + 0.9 * 0.25)
    # Without a budget, nothing changes.
    assert lr_multiplier(20, floor, 1000) == lr_multiplier(20, floor, 1000, None)


def test_budget_state_round_trips_and_rejects_nonsense():
    budget = TimeBudget(2.0)
    budget.load_state_dict({"elapsed_s": 60.0, "budget_s": 120.0})
    assert budget.fraction == pytest.approx(0.5)
    assert budget.state_dict()["elapsed_s"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="max_time_minutes"):
        TimeBudget(0)


@pytest.mark.e2e
def test_training_stops_when_the_budget_is_spent_and_the_schedule_follows_the_clock(
    prepared_english, tmp_path, app_env
):
    from tests.pretrain_runs import pretrain

    overrides = (
        "name=budget",
        "optim.lr=1e-3",
        "trainer.max_steps=1000000",
        "trainer.max_time_minutes=0.1",
        "schedule.warmup_fraction=0.0",
        "trainer.val_check_interval=1000000",
        "trainer.checkpoint_every_n_steps=1000000",
    )
    pretrain(app_env, tmp_path, prepared_english, *overrides)
    run = tmp_path / "runs" / "budget"
    summary = json.loads((run / "summary.json").read_text())
    # Stopped by the clock after 6 s, then evaluated as a finished run.
    assert 1 <= summary["step"] < 1_000_000
    assert "val/mlm_acc" in summary
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # By steps alone the rate would still be 1e-3 × (1 − step / 10⁶); the clock took it to 0.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == 0.0
    (budget_state,) = [v for k, v in ckpt["callbacks"].items() if "TimeBudget" in k]
    assert budget_state["elapsed_s"] >= 6.0
    # Running the same command again finds the budget spent: no more training.
    pretrain(app_env, tmp_path, prepared_english, *overrides)
    again = json.loads((run / "summary.json").read_text())
    assert again["step"] <= summary["step"] + 1
