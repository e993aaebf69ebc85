"""The parts of `bert-pretrain` without training: the Trainer as built (callbacks wired at
construction, batch arithmetic for 1 and 2 processes), the module's time hook, the final report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain.callbacks.budget import TimeBudget
from pretrain.callbacks.exit_after_steps import ExitAfterSteps
from pretrain.callbacks.preemption import PreemptionCheckpoint
from pretrain.callbacks.throughput import ThroughputMonitor
from pretrain.callbacks.training_state import LossMonitor, RNGStateCheckpoint
from pretrain.config import (
    DataConfig,
    DownstreamEvalConfig,
    OptimConfig,
    PretrainConfig,
    Runtime,
    ScheduleConfig,
    StrategyConfig,
    TrainerConfig,
)
from pretrain.errors import UserError
from pretrain.model import BertForPreTraining, preset
from pretrain.module import BertPretrainingModule
from pretrain.report import final_report
from pretrain.train import downstream_eval
from pretrain.trainer_factory import build_trainer, planned_world_size
from tests.pretrain.test_word_order import Rows, collator
from tests.tiny_bert import tiny

# What torchrun sets for the first of 2 processes.
TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29555"}  # fmt: skip


def config(tmp_path: Path, devices: int = 1, strategy: str = "auto", **trainer) -> PretrainConfig:
    """Global batch 8 of micro-batches 2, on `devices` CPU processes."""
    trainer_cfg = TrainerConfig(
        accelerator="cpu", devices=devices, precision="32", max_steps=20, val_check_interval=5,
        enable_progress_bar=False, **trainer,
    )  # fmt: skip
    return PretrainConfig(
        run_dir=str(tmp_path / "run"),
        work_dir=str(tmp_path),
        data=DataConfig(dir=str(tmp_path), global_batch_size=8, micro_batch_size=2),
        trainer=trainer_cfg,
        strategy=StrategyConfig(name=strategy),
    )


def runtime(cfg: PretrainConfig, tmp_path: Path) -> Runtime:
    world = planned_world_size(cfg.trainer)
    per_step = cfg.data.micro_batch_size * world
    return Runtime(world, cfg.data.global_batch_size // per_step, {}, tmp_path, tmp_path)


def test_planned_world_size_reads_devices_as_lightning_does():
    assert planned_world_size(TrainerConfig(accelerator="cpu", devices=1)) == 1
    assert planned_world_size(TrainerConfig(accelerator="cpu", devices="2")) == 2
    assert planned_world_size(TrainerConfig(accelerator="cpu", devices="auto")) == 1
    assert planned_world_size(TrainerConfig(accelerator="cpu", devices=2, num_nodes=3)) == 6


@pytest.mark.parametrize(("devices", "strategy", "accumulation"), [(1, "auto", 4), (2, "ddp", 2)])
def test_trainer_is_built_with_its_batch_arithmetic_and_wired_callbacks(
    tmp_path, devices, strategy, accumulation
):
    cfg = config(tmp_path, devices, strategy, exit_after_steps=7, max_time_minutes=5.0)
    built = build_trainer(cfg, runtime(cfg, tmp_path), logger=None)
    trainer = built.trainer
    assert trainer.accumulate_grad_batches == accumulation  # 8 / (2 × devices)
    assert trainer.val_check_interval == 5 * accumulation  # in micro-batches: every 5 steps
    types = [type(c) for c in trainer.callbacks]
    ours = [LossMonitor, RNGStateCheckpoint, PreemptionCheckpoint, ThroughputMonitor,
            ExitAfterSteps, TimeBudget]  # fmt: skip
    assert [t for t in types if t in ours] == ours  # in this order; the ModelCheckpoint last
    assert type(trainer.callbacks[-1]).__name__ == "ModelCheckpoint"
    monitor = next(c for c in trainer.callbacks if type(c) is ThroughputMonitor)
    assert monitor.world_size == devices and monitor.print_progress  # no bar: not a terminal
    assert monitor.budget is built.budget and built.budget in trainer.callbacks
    assert built.preemption in trainer.callbacks
    assert trainer.loggers == []


def test_no_budget_no_exit_and_the_downstream_eval_excludes_its_time_from_throughput(tmp_path):
    cfg = config(tmp_path)
    cfg.eval_downstream = DownstreamEvalConfig(every_n_steps=3)
    rt = runtime(cfg, tmp_path)
    built = build_trainer(cfg, rt, logger=None, downstream_eval=downstream_eval(cfg, rt))
    callbacks = built.trainer.callbacks
    assert built.budget is None and not any(
        type(c) in (TimeBudget, ExitAfterSteps) for c in callbacks
    )
    monitor = next(c for c in callbacks if type(c) is ThroughputMonitor)
    assert monitor.budget is None
    (downstream,) = [c for c in callbacks if type(c).__name__ == "DownstreamEval"]
    assert callbacks.index(downstream) > callbacks.index(monitor)  # after the stop decisions
    assert downstream.throughput is monitor


def test_a_launcher_with_another_process_count_is_refused(tmp_path, monkeypatch):
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    cfg = config(tmp_path, devices=1, strategy="ddp")
    with pytest.raises(UserError, match=r"started 2 processes but .* = 1 × 1 = 1 processes"):
        build_trainer(cfg, runtime(cfg, tmp_path), logger=None)
    cfg = config(tmp_path, devices=2, strategy="ddp")  # as torchrun --nproc_per_node 2 says
    assert build_trainer(cfg, runtime(cfg, tmp_path), logger=None).trainer.world_size == 2


def test_module_takes_the_budget_fraction_for_its_schedule_at_construction():
    spent = {"fraction": 0.0}
    module = BertPretrainingModule(
        preset("bert-tiny", vocab_size=50),
        OptimConfig(lr=1.0),
        ScheduleConfig(name="linear", warmup_steps=0),
        max_steps=1000,
        time_fraction=lambda: spent["fraction"],
    )
    optimizers = module.configure_optimizers()
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr()[0] == pytest.approx(1.0)
    spent["fraction"] = 0.75  # a quarter of the budget left: the rate decays by time, not steps
    optimizers["optimizer"].step()  # no gradients: changes nothing
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.25)


class FakeTrainer:
    """What `final_report` uses of a Trainer."""

    global_step = 12
    limit_val_batches = 2

    def validate(self, module, datamodule, verbose):
        assert self.limit_val_batches == 1.0  # the whole split, not the periodic limit
        return [{"val/mlm_acc": 0.5, "val/mlm_acc_baseline": 0.25, "val/nsp_acc": 0.75,
                 "val/mlm_loss": 2.0, "val/nsp_loss": 0.5, "val/loss": 2.5}]  # fmt: skip


def test_final_report_writes_summary_json_and_prints_the_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rt = Runtime(1, 1, {}, tmp_path / "data", tmp_path / "data" / "tokenizer")
    last = run_dir / "checkpoints" / "last.ckpt"
    module = SimpleNamespace(model=BertForPreTraining(tiny()))
    ids = {"pad": 0, "cls": 1, "sep": 2, "mask": 3}
    datamodule = SimpleNamespace(
        val_set=Rows(4), val_collator=collator(), manifest={"special_token_ids": ids}
    )
    summary = final_report(FakeTrainer(), module, datamodule, rt, last, run_dir)
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert list(summary) == ["step", "val/mlm_acc", "val/mlm_acc_baseline", "val/nsp_acc",
                             "val/mlm_loss", "val/nsp_loss", "word_order", "tokenizer", "data",
                             "checkpoint", "run_dir"]  # fmt: skip
    assert summary["word_order"]["pairs"] == 4
    assert summary["step"] == 12 and summary["checkpoint"] == str(last)
    out = capsys.readouterr().out
    assert "pretraining finished at step 12" in out
    assert "held-out MLM accuracy  0.5000   most-frequent-token baseline 0.2500  (2.00×)" in out
    assert f"  run         {run_dir} (config.yaml, metrics, summary.json)" in out
    assert "  word order             held-out MLM loss " in out
