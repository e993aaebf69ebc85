"""Strategy choice, DeepSpeed config, checkpoint-kind checks and activation checkpointing (no
processes are launched here; see tests/e2e/test_deepspeed.py for the multi-process runs)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from pretrain.checkpointing import validate_checkpoint
from pretrain.config import StrategyConfig, TrainerConfig
from pretrain.errors import UserError
from pretrain.model import BertForPreTraining, preset, pretraining_loss
from pretrain.strategy import (
    CPUDeepSpeedStrategy,
    ZeROStrategy,
    build_strategy,
    check_slurm_tasks,
    deepspeed_config,
)
from pretrain.train import NON_ZERO_RANK_OVERRIDES, launch_rank
from tests.tiny_bert import batch


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_dict_holds_sharding_only(stage):
    ds = deepspeed_config(StrategyConfig(name="deepspeed", zero_stage=stage))
    assert ds["zero_optimization"] == {"stage": stage}
    # Accumulation, micro-batch, clipping and precision come from the trainer via Lightning.
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_batch_size", "bf16"):
        assert key not in ds


def test_offload_moves_optimizer_and_parameters_to_cpu():
    ds = deepspeed_config(
        StrategyConfig(
            name="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True
        )
    )
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_cpu_gets_the_adapter_and_gpu_the_stock_strategy(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cpu = build_strategy(StrategyConfig(name="deepspeed", zero_stage=3), "cpu")
    assert isinstance(cpu, CPUDeepSpeedStrategy)
    assert cpu.config["zero_optimization"]["stage"] == 3
    gpu = build_strategy(StrategyConfig(name="deepspeed", zero_stage=2), "gpu")
    assert type(gpu) is ZeROStrategy and isinstance(gpu, DeepSpeedStrategy)
    assert isinstance(build_strategy(StrategyConfig(name="ddp"), "cpu"), DDPStrategy)
    assert build_strategy(StrategyConfig(), "cpu") == "auto"


def test_cpu_deepspeed_refuses_a_conflicting_ds_accelerator(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(UserError, match="DS_ACCELERATOR"):
        build_strategy(StrategyConfig(name="deepspeed"), "cpu")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "fsdp"}, "strategy.name"),
        ({"name": "deepspeed", "zero_stage": 4}, "zero_stage"),
        ({"name": "ddp", "offload_optimizer": True}, "need strategy.name=deepspeed"),
        ({"name": "deepspeed", "zero_stage": 2, "offload_parameters": True}, "zero_stage=3"),
        ({"name": "deepspeed", "zero_stage": 0, "offload_optimizer": True}, "zero_stage >= 1"),
    ],
)
def test_bad_strategy_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrategyConfig(**kwargs)


def test_launch_rank_reads_torchrun_then_slurm(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert launch_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launch_rank() == 3
    monkeypatch.setenv("RANK", "1")
    assert launch_rank() == 1
    assert "hydra.output_subdir=null" in NON_ZERO_RANK_OVERRIDES


def test_checkpoint_kind_must_match_the_strategy(tmp_path):
    (tmp_path / "dir.ckpt").mkdir()
    with pytest.raises(UserError, match=r"DeepSpeed .*sharded.* but this run does not use"):
        validate_checkpoint(tmp_path / "dir.ckpt", {}, world_size=1, zero_stage=None)
    with pytest.raises(UserError, match="not a DeepSpeed checkpoint"):
        validate_checkpoint(tmp_path / "dir.ckpt", {}, world_size=1, zero_stage=2)
    torch.save({"global_step": 1}, tmp_path / "file.ckpt")
    with pytest.raises(UserError, match="single-file checkpoint but this run uses DeepSpeed"):
        validate_checkpoint(tmp_path / "file.ckpt", {}, world_size=1, zero_stage=2)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    b = batch()
    results = []
    for ac in (False, True):
        torch.manual_seed(0)
        cfg = preset(
            "bert-tiny", vocab_size=300, max_position_embeddings=64, activation_checkpointing=ac
        )
        model = BertForPreTraining(cfg).train()  # dropout on: checkpointing must replay it
        torch.manual_seed(1)
        out = model(
            b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"]
        )
        loss = pretraining_loss(out, b["labels"], b["next_sentence_label"])[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain_loss, plain_grads), (ac_loss, ac_grads) = results
    assert torch.equal(plain_loss, ac_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ac_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_slurm_task_count_must_equal_devices_times_nodes(monkeypatch):
    """The environment an `srun` step sees (tests/e2e/test_slurm.py submits the real job)."""
    for var in ("SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    check_slurm_tasks(TrainerConfig(devices=2))  # not under SLURM: nothing to compare
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "bert-pretrain")
    check_slurm_tasks(TrainerConfig(devices=4, num_nodes=2))
    check_slurm_tasks(TrainerConfig(devices=[0, 1, 2, 3], num_nodes=2))
    check_slurm_tasks(TrainerConfig(devices="auto", num_nodes=2))  # Lightning resolves auto
    with pytest.raises(
        UserError,
        match=r"SLURM started 8 tasks on 2 node\(s\).* = 2 × 2 = 4.*--nodes=2 --ntasks-per-node=2"
        r".*or set trainer\.devices=4 trainer\.num_nodes=2",
    ):
        check_slurm_tasks(TrainerConfig(devices=2, num_nodes=2))
    with pytest.raises(UserError, match=r"= 8 × 2 = 16"):  # fewer tasks than devices: a hang
        check_slurm_tasks(TrainerConfig(devices="8", num_nodes=2))
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell, not an srun launch
    check_slurm_tasks(TrainerConfig(devices=2, num_nodes=2))
