"""The pretraining option sections that `bert-finetune` accepts (`optim.*`, `schedule.*`,
`trainer.*`, `strategy.*`): every field takes effect in a fine-tuning run, or is refused in one line
naming it."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from pretrain.config import LoggerConfig, OptimConfig, ScheduleConfig, StrategyConfig
from pretrain.errors import UserError
from pretrain.finetune.app import build_trainer, optimizer_steps
from pretrain.finetune.config import FinetuneConfig, FinetuneTrainerConfig
from pretrain.finetune.module import FinetuneModule
from pretrain.model import BertForPreTraining, preset
from pretrain.optim import Lamb
from pretrain.strategy import CPUDeepSpeedStrategy
from tests.finetune_rows import finetune_config, finetune_tiny

TASK = ("task=sequence_classification", "task.name=t", "model_path=m")


def module(optim: OptimConfig, schedule: ScheduleConfig | None = None, steps: int = 10):
    """The fine-tuning module on a fresh (seeded) bert-tiny, its schedule spanning `steps`."""
    torch.manual_seed(0)
    encoder = BertForPreTraining(preset("bert-tiny", vocab_size=100, max_position_embeddings=16))
    return FinetuneModule(encoder.bert, "sequence_classification", 2, 0.1, optim,
                          schedule or ScheduleConfig(), steps, None)  # fmt: skip


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("lamb", Lamb)])
def test_optim_fields_reach_the_optimizer_over_encoder_and_head(name, kind):
    optim = OptimConfig(name=name, lr=3e-4, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.05,
                        implementation="auto")  # fmt: skip
    m = module(optim)
    opt = m.configure_optimizers()["optimizer"]
    assert type(opt) is kind
    assert opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["eps"] == 1e-7
    decay, no_decay = opt.param_groups
    assert decay["initial_lr"] == no_decay["initial_lr"] == 3e-4
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert id(m.head.weight) in ids and id(m.head.bias) not in ids  # no decay on biases
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize(
    "implementation,fused,foreach",
    [("auto", None, None), ("fused", True, None), ("foreach", False, True),
     ("for_loop", False, False)],
)  # fmt: skip
def test_optim_implementation_picks_the_adamw_kernel(implementation, fused, foreach, tmp_path):
    opt = module(OptimConfig(implementation=implementation)).configure_optimizers()["optimizer"]
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach)
    # Fine-tuning's default stays torch's own choice, what it always ran.
    assert FinetuneConfig(model_path="m").optim.implementation == "auto"
    assert finetune_config(tmp_path, *TASK).optim.implementation == "auto"


def test_lamb_takes_every_optimizer_step_of_a_run(
    tiny_model, sequence_files, tmp_path, monkeypatch
):
    steps = []
    step = Lamb.step

    def counted(self, closure=None):
        steps.append(1)
        return step(self, closure)

    monkeypatch.setattr(Lamb, "step", counted)
    result = finetune_tiny(tmp_path, "task=sequence_classification", "task.name=lamb",
                           f"model_path={tiny_model}", "optim.name=lamb", "trainer.max_epochs=1",
                           "trainer.limit_train_batches=3", *sequence_files)  # fmt: skip
    assert len(steps) == 3 and result["epochs_run"] == 1


def lrs(schedule: ScheduleConfig, steps: int = 10) -> list[float]:
    """The learning rate of each of `steps` optimizer steps, as a factor of the peak."""
    m = module(OptimConfig(lr=1.0, implementation="auto"), schedule, steps)
    out = m.configure_optimizers()
    opt, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    found = []
    for _ in range(steps):
        found.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return found


@pytest.mark.parametrize(
    "schedule,expected",
    [
        (ScheduleConfig(warmup_steps=2), [0.5, 1, *(1 - k / 8 for k in range(8))]),
        (ScheduleConfig(warmup_fraction=0.2), [0.5, 1, *(1 - k / 8 for k in range(8))]),
        (ScheduleConfig(name="polynomial", warmup_steps=0, power=0.5, min_lr_ratio=0.2),
         [0.2 + 0.8 * math.sqrt(1 - k / 10) for k in range(10)]),
        (ScheduleConfig(name="constant", warmup_steps=4), [0.25, 0.5, 0.75, *[1] * 7]),
    ],
)  # fmt: skip
def test_schedule_fields_shape_the_learning_rate(schedule, expected):
    assert lrs(schedule) == pytest.approx(expected)


def test_the_schedule_spans_the_runs_steps_and_a_warmup_as_long_is_refused(
    tiny_model, sequence_files, tmp_path
):
    cfg = FinetuneConfig(model_path="m", batch_size=16)
    assert optimizer_steps(cfg, 256, world=1) == 16 * 10  # 10 epochs by default
    assert optimizer_steps(cfg, 256, world=2) == 8 * 10
    short = FinetuneConfig(model_path="m", batch_size=16,
                           trainer=FinetuneTrainerConfig(max_epochs=2, limit_train_batches=3))  # fmt: skip
    assert optimizer_steps(short, 256, world=1) == 6
    constant = FinetuneConfig(
        model_path="m", schedule=ScheduleConfig(name="constant", warmup_steps=99)
    )
    assert optimizer_steps(constant, 256, world=1) == 8 * 10  # all warm-up, nothing to decay
    with pytest.raises(UserError) as err:
        finetune_tiny(tmp_path, "task=sequence_classification", "task.name=w",
                      f"model_path={tiny_model}", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "schedule.warmup_steps=2", *sequence_files)  # fmt: skip
    assert str(err.value).startswith(
        "schedule.warmup_steps=2 is not shorter than the run's 2 optimizer steps "
        "(trainer.max_epochs=1 × 2 batches)"
    )
    assert (
        "\n" not in str(err.value) and not (tmp_path / "finetune" / "w-pretrained-s1234").exists()
    )


def test_trainer_and_logger_fields_reach_the_lightning_trainer(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set by deterministic=True
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer_cfg = FinetuneTrainerConfig(
        max_epochs=5, accelerator="cpu", devices=1, precision="bf16-mixed", gradient_clip_val=0.5,
        limit_train_batches=7, log_every_n_steps=3, deterministic=True, enable_progress_bar=True,
    )  # fmt: skip
    cfg = FinetuneConfig(model_path="m", trainer=trainer_cfg, logger=LoggerConfig(name="csv"))
    try:
        trainer, best = build_trainer(cfg, tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1
    assert trainer.num_nodes == 1 and trainer.precision == "bf16-mixed"
    assert trainer.max_epochs == 5 and trainer.limit_train_batches == 7
    assert trainer.gradient_clip_val == 0.5 and trainer.log_every_n_steps == 3
    assert trainer.progress_bar_callback is not None
    assert [type(logger) for logger in trainer.loggers] == [CSVLogger]
    assert best.monitor == "dev/accuracy"


def test_strategy_fields_reach_the_lightning_strategy(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what build_strategy sets for a CPU run

    def built(strategy: StrategyConfig):
        trainer_cfg = FinetuneTrainerConfig(accelerator="cpu")
        cfg = FinetuneConfig(model_path="m", trainer=trainer_cfg, strategy=strategy,
                             logger=LoggerConfig(name="none"))  # fmt: skip
        return build_trainer(cfg, tmp_path)[0].strategy

    ddp = built(StrategyConfig(name="ddp", find_unused_parameters=True))
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"] is True
    zero = built(StrategyConfig(name="deepspeed", zero_stage=3, offload_optimizer=True,
                                offload_parameters=True))  # fmt: skip
    assert isinstance(zero, CPUDeepSpeedStrategy)
    assert zero.config["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.name=lamb", "strategy=deepspeed_zero2"],
         "optim.name=lamb does not work with strategy deepspeed"),
        (["optim.name=lamb", "optim.implementation=fused"],
         "optim.implementation=fused picks an AdamW kernel"),
        (["optim.name=sgd"], "optim.name='sgd' is not supported"),
        (["optim.implementation=fast"], "optim.implementation='fast' is unknown"),
        (["optim.beta2=1.0"], "optim.beta1/beta2 must be in [0, 1)"),
        (["schedule.name=cosine"], "schedule.name='cosine' is unknown"),
        (["schedule.min_lr_ratio=2"], "schedule.min_lr_ratio must be in [0, 1]"),
        (["schedule.warmup_fraction=1"], "schedule.warmup_fraction must be in [0, 1)"),
        (["trainer.gradient_clip_val=0"], "trainer.gradient_clip_val must be positive or null"),
        (["trainer.precision=fp8"], "trainer.precision='fp8' is unknown"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be positive"),
        (["trainer.num_nodes=0"], "trainer.num_nodes must be positive"),
        (["strategy.offload_optimizer=true"], "strategy.offload_optimizer/offload_parameters need"),
        (["strategy.zero_stage=4"], "strategy.zero_stage must be 0, 1, 2 or 3"),
        (["+trainer.max_steps=10"], "unknown config key trainer.max_steps"),
    ],
)  # fmt: skip
def test_unusable_option_values_are_refused_naming_the_field(overrides, message, tmp_path):
    with pytest.raises(UserError) as err:
        finetune_config(tmp_path, *TASK, *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
