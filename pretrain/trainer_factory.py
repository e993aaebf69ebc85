"""Builds the Lightning Trainer of a pretraining run: devices and strategy, batch arithmetic, and
the callbacks, each given at construction what it needs (nothing is patched in afterwards)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pretrain.callbacks.budget import TimeBudget
from pretrain.callbacks.exit_after_steps import ExitAfterSteps
from pretrain.callbacks.preemption import PreemptionCheckpoint
from pretrain.callbacks.progress import StepProgressBar
from pretrain.callbacks.throughput import ThroughputMonitor, resolve_peak_tflops
from pretrain.callbacks.training_state import LossMonitor, RNGStateCheckpoint
from pretrain.checkpointing import LAST, AtomicCheckpointIO
from pretrain.config import PretrainConfig, Runtime, TrainerConfig
from pretrain.errors import UserError
from pretrain.strategy import distribution_kwargs, uses_cpu


@dataclass
class BuiltTrainer:
    """The Trainer and the callbacks whose state the rest of the run reads."""

    trainer: L.Trainer
    preemption: PreemptionCheckpoint
    budget: TimeBudget | None  # None: no wall-clock budget (trainer.max_time_minutes unset)


def planned_world_size(cfg: TrainerConfig) -> int:
    """Processes in the run, trainer.num_nodes × devices per node, known before any Trainer exists
    (the batch arithmetic needs it at the Trainer's construction). Devices are read as Lightning
    reads them (an int, "N", a list of ids, "auto": every device of the accelerator)."""
    accelerator = CPUAccelerator if uses_cpu(cfg.accelerator) else CUDAAccelerator
    devices = accelerator.auto_device_count() if cfg.devices == "auto" else cfg.devices
    per_node = len(accelerator.get_parallel_devices(accelerator.parse_devices(devices)))
    return per_node * cfg.num_nodes


def build_trainer(
    cfg: PretrainConfig,
    runtime: Runtime,
    logger: Logger | None,
    downstream_eval: Callable[[ThroughputMonitor], Callback] | None = None,
    load_universal: bool = False,
) -> BuiltTrainer:
    """The Trainer for `cfg`, accumulating `runtime.accumulate_grad_batches` micro-batches per
    optimizer step over `runtime.world_size` processes; `logger`: None for none.

    `downstream_eval` builds the evaluation callback (`eval_downstream.*`; None: off) from the
    throughput monitor that leaves its time out; the caller imports it, as fine-tuning is optional.
    `load_universal`: DeepSpeed resumes from a universal checkpoint (`pretrain/elastic.py`).
    """
    # A rich bar (steps, tokens/s, ETA) in terminals; plain lines (ThroughputMonitor) in batch
    # jobs, whose output files a redrawn bar would fill with carriage returns.
    show_bar = cfg.trainer.enable_progress_bar and sys.stdout.isatty()
    budget = (
        TimeBudget(cfg.trainer.max_time_minutes)
        if cfg.trainer.max_time_minutes is not None
        else None
    )
    preemption = PreemptionCheckpoint(Path(cfg.run_dir) / "checkpoints" / LAST)
    accumulation = runtime.accumulate_grad_batches
    trainer = L.Trainer(
        **distribution_kwargs(cfg.strategy, cfg.trainer, load_universal),
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,  # training is step-based over an endless sample stream
        accumulate_grad_batches=accumulation,
        # Lightning counts val_check_interval in micro-batches; ours is in optimizer steps.
        val_check_interval=cfg.trainer.val_check_interval * accumulation,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.limit_val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=show_bar,
        enable_model_summary=True,
        use_distributed_sampler=False,  # our sampler shards by rank itself
        # Under SLURM our PreemptionCheckpoint handles SIGUSR1 (at a step boundary), not Lightning.
        plugins=[AtomicCheckpointIO()]
        + ([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []),
        callbacks=_callbacks(cfg, runtime, preemption, budget, show_bar, downstream_eval),
        logger=logger if logger is not None else False,
        default_root_dir=str(Path(cfg.run_dir)),
    )
    _check_launcher_world_size(trainer, runtime.world_size, cfg.trainer)
    return BuiltTrainer(trainer, preemption, budget)


def _callbacks(
    cfg: PretrainConfig,
    runtime: Runtime,
    preemption: PreemptionCheckpoint,
    budget: TimeBudget | None,
    show_bar: bool,
    downstream_eval: Callable[[ThroughputMonitor], Callback] | None,
) -> list[Callback]:
    """In the order they run at each step; Lightning moves the ModelCheckpoint last, so every
    step's checkpoint is written after the step's loss check, stop decisions and evaluations."""
    trainer_cfg = cfg.trainer
    callbacks: list[Callback] = [
        LossMonitor(),  # first: a NaN/inf loss raises before the step's other callbacks run
        ModelCheckpoint(
            dirpath=Path(cfg.run_dir) / "checkpoints",
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
            # "step" is always among Lightning's monitor candidates: keep the K newest.
            monitor="step",
            mode="max",
            save_top_k=trainer_cfg.keep_last_checkpoints,
            save_last=True,
        ),
        RNGStateCheckpoint(),
        preemption,
    ]
    if show_bar:
        callbacks.append(StepProgressBar())
    throughput = ThroughputMonitor(
        trainer_cfg.log_every_n_steps,
        runtime.world_size,
        print_progress=not show_bar,
        model_cfg=cfg.model,
        peak_tflops=resolve_peak_tflops(trainer_cfg.peak_tflops, trainer_cfg.accelerator),
        budget=budget,  # its remaining time caps the printed ETA
    )
    callbacks.append(throughput)
    if trainer_cfg.exit_after_steps is not None:
        callbacks.append(ExitAfterSteps(trainer_cfg.exit_after_steps))
    if budget is not None:
        callbacks.append(budget)
    if downstream_eval is not None:
        # Last: runs after the stop decisions above, so a stopping launch skips it.
        callbacks.append(downstream_eval(throughput))
    return callbacks


def _check_launcher_world_size(trainer: L.Trainer, planned: int, cfg: TrainerConfig) -> None:
    """A launcher that starts the processes itself (torchrun, srun) tells Lightning how many it
    started; the batch arithmetic above assumed num_nodes × devices, so the two must agree.
    (When Lightning starts them, its world size reads 1 until it has: nothing to compare.)"""
    launched = trainer.world_size
    if launched > 1 and launched != planned:
        raise UserError(
            f"the launcher started {launched} processes but trainer.num_nodes × trainer.devices "
            f"= {cfg.num_nodes} × {cfg.devices} = {planned} processes; set trainer.devices to "
            f"the processes per node (torchrun --nproc_per_node) and trainer.num_nodes to the nodes"
        )
