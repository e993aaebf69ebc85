"""Loggers: W&B offline runs carry the resolved config and metrics, and keep one run id on resume;
TensorBoard event files hold the train/val scalars; online W&B without credentials is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import LoggerConfig
from pretrain.errors import UserError
from pretrain.loggers import build_logger
from tests.wandb_records import config, history


@pytest.mark.e2e
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


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file under `log_dir` (one folder per launch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for version in sorted(log_dir.glob("version_*")):
        events = EventAccumulator(str(version))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return scalars


@pytest.mark.e2e
def test_tensorboard_event_files_hold_train_and_val_metrics(prepared_english, tmp_path, app_env):
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
           f"data.dir={prepared_english}", "name=tb", "logger=tensorboard", "trainer.max_steps=6",
           "trainer.log_every_n_steps=2", "trainer.val_check_interval=3"]  # fmt: skip
    proc = subprocess.run(cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tb"
    scalars = tensorboard_scalars(run / "tensorboard")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "val/mlm_acc", "val/nsp_acc", "val/loss"):  # fmt: skip
        assert tag in scalars, (tag, sorted(scalars))
    assert max(step for step, _ in scalars["train/loss"]) >= 5  # logged to the end of the run
    assert all(0.0 <= value <= 1.0 for _, value in scalars["val/mlm_acc"])
    assert "hp_metric" not in scalars
    assert (run / "tensorboard" / "version_0" / "hparams.yaml").is_file()


def test_online_wandb_without_credentials_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    cfg = LoggerConfig(name="wandb", mode="online")
    with pytest.raises(UserError, match=r"no WANDB_API_KEY.*logger\.mode=offline.*wandb sync"):
        build_logger(cfg, tmp_path / "run", "x", global_rank=0)
    # A `wandb login` entry in ~/.netrc counts as credentials: no error (the logger connects lazily).
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert build_logger(cfg, tmp_path / "run", "x", global_rank=0) is not None
