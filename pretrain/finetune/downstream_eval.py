"""Evaluation during pretraining: a brief fine-tuning on a labelled task every N steps.

    bert-pretrain experiment=demo eval_downstream.every_n_steps=200 eval_downstream.task=rotten_tomatoes

Every `eval_downstream.every_n_steps` optimizer steps, rank 0 copies the current encoder, puts the
fine-tuning head of `bert-finetune` on it (`pretrain/finetune/module.py:FinetuneModule`), trains it
for one epoch on a fixed seeded subset of the task's train split, scores a fixed subset of the dev
split with `bert-finetune`'s metrics and logs them as `downstream/<task>/<metric>` (plus
`downstream/<task>/seconds`, the wall time it took, and `downstream/<task>/degenerate`, 1 when the
copy answers one label for (almost) every dev example, `pretrain/finetune/degenerate.py`) to the
run's loggers, so dashboards show downstream quality rising with pretraining. Same subsets, head initialization, dropout and data
order every time: only the encoder changes between evaluations.

It does not disturb training: the copy is separate (the model keeps its weights and its train
mode), every random-number generator is restored afterwards (the losses, and resuming, are the same
with it on or off), and the time it takes is left out of tokens/s. The other ranks wait at a
barrier meanwhile. Under DeepSpeed ZeRO-1/2 every rank holds the whole model; ZeRO-3 partitions
the parameters and is refused (`pretrain/config.py`). The labelled data comes from local files or
the PyPI cache of `data_prep/labelled.py` (fetched once, as `bert-finetune` does).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, RandomSampler

from pretrain.callbacks.throughput import ThroughputMonitor
from pretrain.config import DownstreamEvalConfig, OptimConfig, ScheduleConfig
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError
from pretrain.finetune import degenerate
from pretrain.finetune.config import TaskConfig
from pretrain.finetune.data import Collator, EncodedDataset, encode
from pretrain.finetune.encoder import load_tokenizer
from pretrain.finetune.module import FinetuneModule, evaluate
from pretrain.finetune.task_data import load_task_data
from pretrain.model import BertConfig, BertModel


def task_config(cfg: DownstreamEvalConfig, work_dir: str) -> TaskConfig:
    """The `conf/task/<cfg.task>.yaml` preset with `cfg.task_fields` applied; fetched data sets go
    where `bert-finetune` puts them (`<work_dir>/data/labelled/<source>`, `<work_dir>/cache/pypi`)."""
    presets = Path(CONF_DIR) / "task"
    preset = presets / f"{cfg.task}.yaml"
    if not preset.is_file():
        known = sorted(p.stem for p in presets.glob("*.yaml"))
        raise UserError(
            f"eval_downstream.task={cfg.task!r} is not a task preset; use one of {known} "
            f"(with eval_downstream.task_fields for your own files)"
        )
    merged = OmegaConf.merge(OmegaConf.load(preset), cfg.task_fields)
    source = merged.get("source", "files")
    merged.setdefault("data_dir", f"{work_dir}/data/labelled/{source}")
    merged.setdefault("cache_dir", f"{work_dir}/cache/pypi")
    if source == "files" and merged.get("dev") and not merged.get("test"):
        merged.test = merged.dev  # the test split is never read here
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), merged))
    except ValueError as err:
        raise UserError(f"invalid eval_downstream task: {err}") from None
    except Exception as err:  # OmegaConf: unknown field or wrong type in task_fields
        raise UserError(f"invalid eval_downstream.task_fields: {err}") from None
    assert isinstance(typed, TaskConfig)
    return typed


@dataclass
class DevTask:
    """The fixed subsets, encoded once, and what scoring them needs."""

    task: TaskConfig
    labels: list[str]
    train: EncodedDataset
    dev: EncodedDataset
    dev_records: list[dict]
    pad_id: int


def _subset(records: list[dict], n: int, seed: int) -> list[dict]:
    """`n` records chosen with `seed` (all of them if fewer), in their original order."""
    if len(records) <= n:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def prepare_dev_task(
    cfg: DownstreamEvalConfig, work_dir: str, tokenizer_dir: Path, model_cfg: BertConfig
) -> DevTask:
    task = task_config(cfg, work_dir)
    data = load_task_data(task)
    tokenizer = load_tokenizer(tokenizer_dir, model_cfg)
    max_len = min(task.max_seq_length, model_cfg.max_position_embeddings)
    label_to_id = {label: i for i, label in enumerate(data.labels)}
    train = _subset(data.records["train"], cfg.train_examples, cfg.seed)
    dev = _subset(data.records["dev"], cfg.eval_examples, cfg.seed + 1)
    pad_id = tokenizer.token_to_id("[PAD]")
    return DevTask(
        task=task,
        labels=data.labels,
        train=encode(tokenizer, task.type, train, label_to_id, max_len),
        dev=encode(tokenizer, task.type, dev, label_to_id, max_len),
        dev_records=dev,
        pad_id=0 if pad_id is None else pad_id,
    )


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run the block with the torch (CPU and CUDA), Python and NumPy generators restored after
    it, so the block draws nothing from the streams training uses."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def finetune_copy(
    weights: dict[str, torch.Tensor],
    model_cfg: BertConfig,
    dev_task: DevTask,
    cfg: DownstreamEvalConfig,
    device: torch.device,
) -> dict[str, float]:
    """Fine-tune a fresh encoder holding `weights` (fp32) for one epoch; return the dev metrics."""
    return finetune_copy_scored(weights, model_cfg, dev_task, cfg, device)[0]


def finetune_copy_scored(
    weights: dict[str, torch.Tensor],
    model_cfg: BertConfig,
    dev_task: DevTask,
    cfg: DownstreamEvalConfig,
    device: torch.device,
) -> tuple[dict[str, float], dict]:
    """`finetune_copy`'s dev metrics and the verdict of `degenerate.check` on its predictions."""
    with isolated_rng(device):
        torch.manual_seed(cfg.seed)  # head initialization and dropout: the same every time
        encoder = BertModel(model_cfg)
        encoder.load_state_dict(weights)
        steps = max(1, math.ceil(len(dev_task.train) / cfg.batch_size))
        module = FinetuneModule(
            encoder,
            dev_task.task.type,
            len(dev_task.labels),
            model_cfg.hidden_dropout,
            OptimConfig(lr=cfg.lr, weight_decay=0.01, implementation="auto"),  # torch's AdamW
            ScheduleConfig(warmup_fraction=0.1),
            steps,
            evaluator=None,
        ).to(device)
        optimizers = module.configure_optimizers()
        optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        collate = Collator(dev_task.pad_id)
        order = torch.Generator().manual_seed(cfg.seed)
        module.train()
        for batch in DataLoader(
            dev_task.train,
            batch_size=cfg.batch_size,
            sampler=RandomSampler(dev_task.train, generator=order),
            collate_fn=collate,
        ):
            loss = module.loss({k: v.to(device) for k, v in batch.items()})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        module.eval()
        predictions: dict[int, Any] = {}
        with torch.no_grad():
            for batch in DataLoader(dev_task.dev, batch_size=64, collate_fn=collate):
                predictions.update(module.predictions({k: v.to(device) for k, v in batch.items()}))
    metrics, rows = evaluate(
        dev_task.task.type, dev_task.dev_records, dev_task.labels, predictions, dev_task.dev
    )
    return metrics, degenerate.check(dev_task.task.type, rows)


class DownstreamEval(L.Callback):
    """Every `cfg.every_n_steps` optimizer steps: fine-tune a copy on the dev task (rank 0) and
    log `downstream/<task>/<metric>` and `downstream/<task>/seconds`."""

    def __init__(
        self,
        cfg: DownstreamEvalConfig,
        work_dir: str,
        tokenizer_dir: Path,
        model_cfg: BertConfig,
        throughput: ThroughputMonitor | None = None,
    ):
        self.cfg = cfg
        self.throughput = throughput  # told the time each evaluation takes: not training time
        self.work_dir, self.tokenizer_dir, self.model_cfg = work_dir, tokenizer_dir, model_cfg
        self.dev_task: DevTask | None = None
        self.last: dict[str, float] = {}
        self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # a resumed run does not repeat that step's eval
        if trainer.is_global_zero and self.dev_task is None:
            # Reading and tokenizing once; a missing data set fails here, before any step.
            self.dev_task = prepare_dev_task(
                self.cfg, self.work_dir, self.tokenizer_dir, self.model_cfg
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # inside a gradient-accumulation cycle: not a step boundary
        self._last_step = step
        # A stopping launch (preemption, exit_after_steps) saves its time for the checkpoint.
        if step % self.cfg.every_n_steps or trainer.should_stop:
            return
        start = time.perf_counter()
        if trainer.is_global_zero:
            assert self.dev_task is not None
            self.evaluate(trainer, pl_module, step, start)
        trainer.strategy.barrier("downstream evaluation")
        elapsed = time.perf_counter() - start
        if self.throughput is not None:
            self.throughput.exclude(elapsed)

    def evaluate(self, trainer: L.Trainer, pl_module, step: int, start: float) -> None:
        bert = pl_module.model.bert
        weights = {k: v.detach().float().clone() for k, v in bert.state_dict().items()}
        metrics, verdict = finetune_copy_scored(
            weights, self.model_cfg, self.dev_task, self.cfg, pl_module.device
        )
        seconds = time.perf_counter() - start
        name = self.dev_task.task.name
        self.last = {**metrics, "seconds": seconds, "degenerate": float(verdict["degenerate"])}
        # Lightning logs the metrics of the batch that completed optimizer step N (val/* too) at
        # logger step N - 1; the same step keeps the curves aligned and W&B's steps monotonic.
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"downstream/{name}/{k}": v for k, v in self.last.items()}, step - 1
            )
        rank_zero_info(
            f"downstream evaluation at step {step}: {name} "
            + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f"  ({seconds:.1f} s, {len(self.dev_task.train)} train / "
            f"{len(self.dev_task.dev)} dev examples)"
            + (
                f"; degenerate: {degenerate.describe('dev', verdict)}"
                if verdict["degenerate"]
                else ""
            )
        )
