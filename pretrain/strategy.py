"""The one place that decides how training is distributed and in which precision.

`auto` runs one process (or lets Lightning pick for the devices given); `ddp` replicates the model
per process and all-reduces gradients (gloo on CPU, NCCL on GPU); `deepspeed` shards optimizer
state (ZeRO-1), gradients too (ZeRO-2) and parameters too (ZeRO-3), optionally offloading the
optimizer (and, at stage 3, the parameters) to CPU memory.

DeepSpeed on GPUs uses Lightning's `DeepSpeedStrategy` (as `ZeROStrategy`, which only fixes a
double division of the loss by the accumulation steps). On CPUs (tests, laptops, CI) it uses
`CPUDeepSpeedStrategy`, which runs the very same ZeRO code with DeepSpeed's CPU accelerator
(`DS_ACCELERATOR=cpu`) and the gloo backend.

Under DeepSpeed, `trainer.precision` selects DeepSpeed's own modes (not torch autocast):
`bf16-mixed` → `"bf16": {"enabled": true}` (bf16 weights and activations, fp32 master weights in
the optimizer), `16-mixed` → `"fp16"` with dynamic loss scaling, `32` → fp32 throughout.
Gradient accumulation and clipping are never written into the DeepSpeed dictionary here: Lightning
fills them from `trainer.accumulate_grad_batches` and `trainer.gradient_clip_val`.
"""

from __future__ import annotations

import os

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, Strategy
from typing_extensions import override

from pretrain.checkpointing import save_directory_atomically
from pretrain.config import StrategyConfig
from pretrain.errors import UserError


class ZeROStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy (used as is on GPUs), with one fix: the loss is divided by
    the gradient-accumulation steps once, not twice.

    Lightning's training loop already divides each micro-batch loss by
    `trainer.accumulate_grad_batches`, and `DeepSpeedEngine.backward` divides it again by
    `gradient_accumulation_steps` (Lightning 2.6, DeepSpeed 0.19), which would shrink gradients by
    the accumulation factor and make clipping and AdamW's epsilon act differently depending on how
    a global batch is split. (AdamW is nearly invariant to a constant gradient scale, so the loss
    curves barely show it; the gradient norm that clipping sees does.)
    """

    @override
    def backward(self, closure_loss, optimizer, *args, **kwargs):
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    @override
    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        # DeepSpeed writes a directory of per-rank shards in place; write it into a temporary
        # sibling and rename it when every rank is done (pretrain/checkpointing.py).
        save = super().save_checkpoint
        save_directory_atomically(
            self, filepath, lambda tmp: save(checkpoint, tmp, storage_options)
        )


class CPUDeepSpeedStrategy(ZeROStrategy):
    """The DeepSpeed strategy with its CUDA-only checks lifted, for DeepSpeed's CPU accelerator.
    Used only when the accelerator is the CPU; everything else is inherited."""

    strategy_name = "deepspeed_cpu"

    @override
    def setup_environment(self) -> None:
        # The parent refuses anything but CUDAAccelerator; skip to DDP's environment setup.
        DDPStrategy.setup_environment(self)

    @override
    def setup_distributed(self) -> None:
        # As the parent, less `_validate_device_index_selection`: CPU devices carry no index.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    @override
    def root_device(self) -> torch.device:
        # DeepSpeed's engine reads `device_rank` from the device index; CPU devices have none.
        return torch.device("cpu", self.local_rank)


def uses_cpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` resolves to the CPU."""
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def deepspeed_config(cfg: StrategyConfig, load_universal: bool = False) -> dict:
    """The DeepSpeed dictionary for a ZeRO stage: sharding and offload only. Precision,
    accumulation, micro-batch and clipping are added by Lightning from the trainer settings.
    `load_universal`: this launch resumes from a universal checkpoint (`pretrain/elastic.py`)."""
    zero: dict = {"stage": cfg.zero_stage}
    extra: dict = {}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        # Let torch's AdamW take the offloaded step (DeepSpeedCPUAdam needs a compiled op).
        extra["zero_force_ds_cpu_optimizer"] = False
    if cfg.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if load_universal:
        extra["checkpoint"] = {"load_universal": True}
    return {
        "zero_allow_untested_optimizer": True,  # torch's AdamW, built in configure_optimizers
        "zero_optimization": zero,
        **extra,
    }


def build_strategy(
    cfg: StrategyConfig, accelerator: str = "auto", load_universal: bool = False
) -> Strategy | str:
    if cfg.name == "ddp":
        return DDPStrategy(find_unused_parameters=cfg.find_unused_parameters)
    if cfg.name == "deepspeed":
        if uses_cpu(accelerator):
            # Must be set before DeepSpeed first picks its accelerator (at its first use).
            if os.environ.setdefault("DS_ACCELERATOR", "cpu") != "cpu":
                raise UserError(
                    f"DS_ACCELERATOR={os.environ['DS_ACCELERATOR']!r} but trainer.accelerator "
                    f"is the CPU; unset DS_ACCELERATOR or set it to 'cpu'"
                )
            return CPUDeepSpeedStrategy(config=deepspeed_config(cfg, load_universal))
        return ZeROStrategy(config=deepspeed_config(cfg, load_universal))
    return "auto"


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 autocast where the hardware computes in bf16, else the safe alternative.

    On CPUs without AVX512-BF16 or AMX, bf16 matmuls are emulated and ~100× slower than fp32
    (measured: 1 vs 105 GFLOP/s on an AMD EPYC), so `auto` picks fp32 there. On GPUs without
    bf16 (pre-Ampere) it picks fp16 with dynamic loss scaling.
    """
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if native_bf16 else "32"


def device_count(devices) -> int | None:
    """Processes per node that `trainer.devices` asks for: an int, "N", or a list of device ids;
    None for `auto` (Lightning decides from the hardware)."""
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return None


def check_slurm_tasks(trainer) -> None:
    """Under `srun` Lightning runs exactly one task per device and takes each task's rank from
    SLURM, so SLURM's task count must equal trainer.devices × trainer.num_nodes: with more tasks
    the extra ranks fall outside the world size, with fewer the others wait for them forever."""
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in (
        "bash",
        "interactive",  # Lightning's convention: an interactive allocation, not an srun launch
    ):
        return
    devices = device_count(trainer.devices)
    if devices is None:
        return
    ntasks = int(os.environ["SLURM_NTASKS"])
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
    expected = devices * trainer.num_nodes
    if ntasks != expected:
        per_node = f"{ntasks // nodes}" if ntasks % nodes == 0 else f"{ntasks}/{nodes}"
        raise UserError(
            f"SLURM started {ntasks} tasks on {nodes} node(s) (SLURM_NTASKS) but trainer.devices × "
            f"trainer.num_nodes = {devices} × {trainer.num_nodes} = {expected}, and Lightning runs "
            f"exactly one task per device; submit with --nodes={trainer.num_nodes} "
            f"--ntasks-per-node={devices} (slurm/*.sbatch then set both fields), or set "
            f"trainer.devices={per_node} trainer.num_nodes={nodes}"
        )


def distribution_kwargs(strategy: StrategyConfig, trainer, load_universal: bool = False) -> dict:
    """The `lightning.Trainer` arguments that place the work: devices, nodes, strategy, precision.

    `trainer` is any config with accelerator, devices, num_nodes and precision (pretraining's and
    fine-tuning's trainer sections both have them). Refuses a SLURM launch whose task count does
    not match (`check_slurm_tasks`)."""
    check_slurm_tasks(trainer)
    return dict(
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        num_nodes=trainer.num_nodes,
        strategy=build_strategy(strategy, trainer.accelerator, load_universal),
        precision=resolve_precision(trainer.precision, trainer.accelerator),
    )
