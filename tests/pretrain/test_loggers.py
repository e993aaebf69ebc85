"""Loggers: W&B offline runs carry the resolved config and metrics, and keep one run id on resume."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.wandb_records import config, history

pytestmark = pytest.mark.e2e


def test_wandb_offline_run_has_config_and_metrics_and_keeps_its_id(
    prepared_english, tmp_path, app_env
):
    env = {k: v for k, v in app_env.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no credentials -> offline
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
           f"data.dir={prepared_english}", "name=wb", "logger=wandb", "trainer.max_steps=8",
           "trainer.log_every_n_steps=2", "trainer.val_check_interval=4",
           "trainer.checkpoint_every_n_steps=4"]  # fmt: skip
    for extra in (["trainer.exit_after_steps=4"], []):  # interrupted, then resumed
        proc = subprocess.run([*cmd, *extra], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "wb"
    run_id = (run / "wandb_run_id").read_text().strip()
    logs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 2  # both launches logged into the same W&B run

    cfg = config(logs[0])
    assert cfg["model"]["vocab_size"] == 1000 and cfg["trainer"]["max_steps"] == 8
    rows = [row for log in logs for row in history(log)]
    steps_with_loss = sorted({row["trainer/global_step"] for row in rows if "train/loss" in row})
    assert steps_with_loss[0] <= 2 and steps_with_loss[-1] >= 6
    keys = set().union(*rows)
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "val/mlm_acc", "val/nsp_acc", "val/mlm_acc_baseline"):  # fmt: skip
        assert key in keys, (key, sorted(keys))
