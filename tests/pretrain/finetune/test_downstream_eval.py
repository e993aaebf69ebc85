"""Evaluation during pretraining (`eval_downstream.*`): a brief fine-tuning on a tiny local task that
leaves training exactly as it would have been without it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from pretrain.config import DownstreamEvalConfig, to_typed
from pretrain.errors import UserError
from pretrain.finetune.downstream_eval import finetune_copy, prepare_dev_task
from pretrain.model import BertForPreTraining, preset
from pretrain.train import CONF_DIR, train
from tests.finetune_rows import synthetic, vocabulary_words, write_splits


@pytest.fixture(scope="module")
def keyword_files(prepared_english, tmp_path_factory) -> dict:
    """A tiny local sentiment-like task (label `yes` iff a key phrase occurs): never a download."""
    words = vocabulary_words(prepared_english / "tokenizer")
    rows = {"train": synthetic(words, 96, 0, False), "dev": synthetic(words, 32, 1, False)}
    overrides = write_splits(tmp_path_factory.mktemp("keyword"), rows, "csv")
    fields = dict(o.removeprefix("task.").split("=", 1) for o in overrides)
    return {"name": "keyword", "max_seq_length": 32, **fields}


BASE = (
    "experiment=debug",
    "trainer.max_steps=6",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=6",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.enable_progress_bar=false",
)


def pretrain_cfg(work: Path, data: Path, *overrides: str):
    extra = [f"work_dir={work}", f"data.dir={data}", *overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_typed(compose("pretrain", overrides=[*BASE, *extra]))


def eval_overrides(fields: dict, every: int = 3) -> list[str]:
    return [
        f"eval_downstream.every_n_steps={every}",
        "eval_downstream.task=sequence_classification",
        *(f"+eval_downstream.task_fields.{k}={v}" for k, v in fields.items()),
        "eval_downstream.train_examples=64",
        "eval_downstream.eval_examples=32",
    ]


def logged(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every metric of every launch (CSV version) of a run: {name: {logger step: value}}."""
    out: dict[str, dict[int, float]] = {}
    for version in sorted((run_dir / "csv").glob("version_*")):
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if v and k not in ("step", "epoch"):
                        out.setdefault(k, {})[int(row["step"])] = float(v)
    return out


def test_finetuning_a_copy_leaves_model_and_random_streams_untouched(
    prepared_english, keyword_files, tmp_path
):
    cfg = DownstreamEvalConfig(
        every_n_steps=1,
        task="sequence_classification",
        task_fields=keyword_files,
        train_examples=64,
        eval_examples=24,
    )
    model_cfg = preset("bert-tiny", vocab_size=1000, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForPreTraining(model_cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dev_task = prepare_dev_task(cfg, str(tmp_path), prepared_english / "tokenizer", model_cfg)
    assert (len(dev_task.train), len(dev_task.dev)) == (64, 24)  # fixed subsets
    streams = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()

    weights = {k: v.detach().float().clone() for k, v in model.bert.state_dict().items()}
    first = finetune_copy(weights, model_cfg, dev_task, cfg, torch.device("cpu"))
    assert set(first) == {"accuracy", "macro_f1", "mcc"} and 0 <= first["accuracy"] <= 1
    assert torch.equal(torch.get_rng_state(), streams[0]) and random.getstate() == streams[1]
    assert np.array_equal(np.random.get_state()[1], streams[2])
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Seeded head, dropout and order: the same encoder scores the same.
    assert finetune_copy(weights, model_cfg, dev_task, cfg, torch.device("cpu")) == first


def test_training_is_identical_with_it_on_or_off_and_resumes_exactly(
    prepared_english, keyword_files, tmp_path
):
    off = train(pretrain_cfg(tmp_path, prepared_english, "name=off"))
    on = train(pretrain_cfg(tmp_path, prepared_english, "name=on", *eval_overrides(keyword_files)))
    runs = tmp_path / "runs"
    losses_off, metrics_on = logged(runs / "off")["train/loss_global"], logged(runs / "on")
    assert len(losses_off) == 6 and metrics_on["train/loss_global"] == losses_off  # bit-identical
    assert on["val/mlm_acc"] == off["val/mlm_acc"] and on["val/nsp_acc"] == off["val/nsp_acc"]
    # Evaluated after optimizer steps 3 and 6 (logged, like Lightning's metrics, at step N - 1).
    assert set(metrics_on["downstream/keyword/accuracy"]) == {2, 5}
    assert all(0 <= v <= 1 for v in metrics_on["downstream/keyword/accuracy"].values())
    assert set(metrics_on["downstream/keyword/mcc"]) == {2, 5}
    assert all(s > 0 for s in metrics_on["downstream/keyword/seconds"].values())
    assert set(metrics_on["downstream/keyword/degenerate"].values()) <= {0.0, 1.0}  # a flag
    assert "downstream/keyword/accuracy" not in logged(runs / "off")

    # Interrupted after step 2 and resumed: the same losses and evaluations as without a stop.
    resumed = [*eval_overrides(keyword_files), "name=resumed"]
    train(pretrain_cfg(tmp_path, prepared_english, *resumed, "trainer.exit_after_steps=2"))
    assert len(logged(runs / "resumed")["train/loss_global"]) == 2
    train(pretrain_cfg(tmp_path, prepared_english, *resumed))
    metrics_resumed = logged(runs / "resumed")
    assert metrics_resumed["train/loss_global"] == losses_off
    assert (
        metrics_resumed["downstream/keyword/accuracy"] == metrics_on["downstream/keyword/accuracy"]
    )


def test_bad_settings_fail_clearly(prepared_english, keyword_files, tmp_path):
    with pytest.raises(UserError, match="ZeRO-3 partitions the parameters"):
        pretrain_cfg(
            tmp_path,
            prepared_english,
            "strategy=deepspeed_zero3",
            "eval_downstream.every_n_steps=5",
        )
    with pytest.raises(UserError, match=r"eval_downstream\.every_n_steps must be >= 0"):
        pretrain_cfg(tmp_path, prepared_english, "eval_downstream.every_n_steps=-1")
    model_cfg = preset("bert-tiny", vocab_size=1000, max_position_embeddings=64)
    tokenizer = prepared_english / "tokenizer"
    with pytest.raises(UserError, match="'sst2' is not a task preset; use one of"):
        prepare_dev_task(DownstreamEvalConfig(task="sst2"), str(tmp_path), tokenizer, model_cfg)
    bad = DownstreamEvalConfig(
        task="sequence_classification", task_fields={**keyword_files, "text_column": "review"}
    )
    with pytest.raises(UserError, match="no text column 'review'"):
        prepare_dev_task(bad, str(tmp_path), tokenizer, model_cfg)
