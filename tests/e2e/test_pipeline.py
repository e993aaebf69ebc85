"""End to end through `bert-pretrain` (the `python -m pretrain.train` form) on a tiny real corpus."""

from __future__ import annotations

import csv
import json

import pytest

from tests.pretrain_runs import pretrain, train_losses

pytestmark = pytest.mark.e2e


def test_pretraining_loss_falls_and_the_run_is_reproducible_from_its_directory(
    prepared_english, tmp_path, app_env
):
    proc = pretrain(
        app_env,
        tmp_path,
        prepared_english,
        "name=falls",
        "trainer.max_steps=40",
        "optim.lr=2e-3",
        "trainer.val_check_interval=40",
    )
    run = tmp_path / "runs" / "falls"
    losses = train_losses(run)
    assert len(losses) >= 30
    first = sum(losses[s] for s in sorted(losses)[:5]) / 5
    last = sum(losses[s] for s in sorted(losses)[-5:]) / 5
    assert last < first - 0.5, (first, last)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 40
    assert 0.0 <= summary["val/mlm_acc"] <= 1.0 and summary["val/mlm_acc_baseline"] > 0
    assert "held-out MLM accuracy" in proc.stdout
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # Everything needed to reproduce the run lies beside its checkpoints.
    saved = (run / "config.yaml").read_text()
    assert "vocab_size: 1000" in saved and "max_steps: 40" in saved
    assert json.loads((run / "data_manifest.json").read_text())["max_seq_length"] == 64


def test_resumed_run_has_the_same_losses_as_an_uninterrupted_one(
    prepared_english, tmp_path, app_env
):
    """fp32 on CPU: exact. The data order, masks, dropout RNG, optimizer and schedule all continue."""
    common = ("trainer.max_steps=16", "trainer.checkpoint_every_n_steps=4")
    pretrain(app_env, tmp_path, prepared_english, "name=whole", *common)
    pretrain(app_env, tmp_path, prepared_english, "name=cut", *common, "trainer.exit_after_steps=6")
    assert max(train_losses(tmp_path / "runs" / "cut")) < 16
    proc = pretrain(app_env, tmp_path, prepared_english, "name=cut", *common)
    assert "resuming from" in proc.stdout + proc.stderr
    whole, cut = train_losses(tmp_path / "runs" / "whole"), train_losses(tmp_path / "runs" / "cut")
    assert sorted(whole) == sorted(cut) and len(whole) >= 15
    assert whole == cut


def test_only_the_newest_periodic_checkpoints_are_kept(prepared_english, tmp_path, app_env):
    pretrain(app_env, tmp_path, prepared_english, "name=keep", "trainer.max_steps=8",
             "trainer.checkpoint_every_n_steps=2", "trainer.keep_last_checkpoints=2",
             "trainer.val_check_interval=8")  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "runs" / "keep" / "checkpoints").iterdir())
    assert names == [n + suffix for n in ("last", "step0000006", "step0000008")
                     for suffix in (".ckpt", ".ckpt.sha256")]  # fmt: skip


def test_validation_interval_counts_optimizer_steps_under_accumulation(
    prepared_english, tmp_path, app_env
):
    # debug: global batch 8 = micro-batch 4 × 2 accumulation steps.
    pretrain(app_env, tmp_path, prepared_english, "name=acc", "trainer.max_steps=6",
             "trainer.val_check_interval=3")  # fmt: skip
    steps = set()
    for path in (tmp_path / "runs" / "acc").glob("csv/version_*/metrics.csv"):
        with open(path) as f:
            steps |= {int(r["step"]) for r in csv.DictReader(f) if r.get("val/mlm_acc")}
    # Periodic validations log at global_step - 1 (after steps 3 and 6); the final whole-split
    # evaluation logs at step 6. Counting micro-batches would have validated after 1.5 and 3 steps.
    assert steps == {2, 5, 6}, steps


def test_bf16_mixed_clips_gradients_with_the_default_fused_adamw(
    prepared_english, tmp_path, app_env
):
    """The config's defaults (bf16-mixed, fused AdamW, clipping at 1.0) without DeepSpeed: Lightning
    refuses to clip for a fused optimizer under autocast; we clip as its base precision does.
    A small clip value makes clipping bind, so the runs show it is applied, and applied alike."""
    common = ("trainer.precision=bf16-mixed", "trainer.max_steps=6", "trainer.val_check_interval=6",
              "optim.lr=2e-3", "model.hidden_dropout=0", "model.attention_dropout=0")  # fmt: skip
    runs = {
        "fused": ("optim.implementation=fused", "trainer.gradient_clip_val=0.05"),
        "foreach": ("optim.implementation=foreach", "trainer.gradient_clip_val=0.05"),
        "unclipped": ("optim.implementation=fused", "trainer.gradient_clip_val=null"),
    }
    losses = {}
    for name, overrides in runs.items():
        pretrain(app_env, tmp_path, prepared_english, f"name={name}", *common, *overrides)
        losses[name] = train_losses(tmp_path / "runs" / name)
    assert len(losses["fused"]) == 6
    for step, loss in losses["fused"].items():
        assert abs(loss - losses["foreach"][step]) < 1e-3 * loss, (step, losses)
    assert max(abs(losses["fused"][s] - losses["unclipped"][s]) for s in losses["fused"]) > 1e-2


def test_corrupt_checkpoint_is_refused_with_its_name(prepared_english, tmp_path, app_env):
    ckpt = tmp_path / "runs" / "broken" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    proc = pretrain(app_env, tmp_path, prepared_english, "name=broken", check=False)
    assert proc.returncode == 2
    assert f"checkpoint corrupt: {ckpt}" in proc.stderr and "truncated or damaged" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_checkpoint_of_another_model_is_refused(prepared_english, tmp_path, app_env):
    pretrain(
        app_env,
        tmp_path,
        prepared_english,
        "name=m",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    )
    proc = pretrain(
        app_env, tmp_path, prepared_english, "name=m", "model.num_layers=3", check=False
    )
    assert proc.returncode == 2
    assert "model.num_layers: checkpoint 2, config 3" in proc.stderr


def test_missing_data_dir_and_unknown_preset_fail_clearly(tmp_path, app_env):
    proc = pretrain(app_env, tmp_path, tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "bert-prep" in proc.stderr and "Traceback" not in proc.stderr
    proc = pretrain(app_env, tmp_path, tmp_path / "nope", "model=bert-enormous", check=False)
    assert proc.returncode != 0 and "bert-enormous" in proc.stderr and "bert-mini" in proc.stderr
