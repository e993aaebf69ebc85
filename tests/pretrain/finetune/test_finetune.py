"""`bert-finetune` end to end on tiny synthetic tasks (a bert-tiny, seconds per run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.errors import UserError
from pretrain.export import export_hf
from pretrain.model import BertForPreTraining, preset
from pretrain.weights import Pretrained
from tests.finetune_rows import SIZES, finetune_tiny


def test_sequence_classification_learns_a_keyword_task(tiny_model, sequence_files, tmp_path):
    result = finetune_tiny(
        tmp_path,
        "task=sequence_classification",
        "task.name=keyword",
        f"model_path={tiny_model}",
        "trainer.max_epochs=4",
        *sequence_files,
    )
    assert result["test"]["accuracy"] > 0.75, result  # chance is 0.5
    run_dir = tmp_path / "finetune" / "keyword-pretrained-s1234"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test"] == result["test"] and set(saved["dev"]) == {"accuracy", "macro_f1", "mcc"}
    predictions = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").open()]
    assert len(predictions) == SIZES["test"]
    acc = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert acc == pytest.approx(result["test"]["accuracy"])
    assert (run_dir / "config.yaml").is_file() and json.loads(
        (run_dir / "labels.json").read_text()
    ) == ["no", "yes"]


def test_token_classification_finds_the_entities(tiny_model, token_files, tmp_path):
    result = finetune_tiny(
        tmp_path,
        "task=token_classification",
        "task.name=phrase",
        f"model_path={tiny_model}",
        "init=random",
        "trainer.max_epochs=4",
        *token_files,
    )
    assert result["test"]["f1"] > 0.5, result
    assert result["labels"] == ["O", "B-KEY", "I-KEY"]
    run_dir = tmp_path / "finetune" / "phrase-random-s1234"
    first = json.loads((run_dir / "test_predictions.jsonl").open().readline())
    assert len(first["predictions"]) == len(first["tokens"])


def test_clear_errors(tiny_model, sequence_files, token_files, tmp_path, prepared_english):
    seq = ["task=sequence_classification", "task.name=e", f"model_path={tiny_model}"]
    with pytest.raises(UserError, match="no text column 'review'"):
        finetune_tiny(tmp_path, *seq, *sequence_files, "task.text_column=review")
    with pytest.raises(UserError, match="does not exist"):
        finetune_tiny(tmp_path, *seq[:2], f"model_path={tmp_path / 'nope'}", *sequence_files)
    with pytest.raises(UserError, match="unknown label 'yes'"):
        finetune_tiny(tmp_path, *seq, *sequence_files, "task.labels=[no,maybe]")
    with pytest.raises(UserError, match=r"needs task\.train, task\.dev, task\.test"):
        finetune_tiny(tmp_path, *seq)
    dev = tmp_path / "bad_dev.jsonl"
    dev.write_text(json.dumps({"tokens": ["a"], "tags": ["B-ORG"]}) + "\n")
    tok = [o for o in token_files if not o.startswith("task.dev=")]
    with pytest.raises(UserError, match=r"bad_dev\.jsonl row 1: unknown label 'B-ORG'"):
        finetune_tiny(tmp_path, "task=token_classification", "task.name=t", f"model_path={tiny_model}",
            *tok, f"task.dev={dev}")  # fmt: skip
    # a tokenizer with another vocabulary than the model's
    small = tmp_path / "small_tok"
    small.mkdir()
    spec = json.loads((prepared_english / "tokenizer" / "tokenizer.json").read_text())
    spec["model"]["vocab"] = dict(list(spec["model"]["vocab"].items())[:500])
    (small / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="has 500 tokens but the model's vocabulary has 1000"):
        finetune_tiny(tmp_path, *seq, *sequence_files, f"tokenizer_dir={small}")
    with pytest.raises(UserError, match=r"task\.type=sequence_classification"):
        finetune_tiny(tmp_path, *seq, "task.source=wnut16")


@pytest.mark.e2e
def test_bert_finetune_command(tiny_model, token_files, tmp_path, app_env):
    cmd = [
        sys.executable,
        "-m",
        "pretrain.finetune",
        "task=token_classification",
        "task.name=cli",
        f"model={tiny_model}",
        f"work_dir={tmp_path}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "task.max_seq_length=32",
        *token_files,
    ]
    proc = subprocess.run(
        cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuned cli (pretrained, seed 1234)" in proc.stdout
    run_dir = tmp_path / "finetune" / "cli-pretrained-s1234"
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1
    assert len((run_dir / "test_predictions.jsonl").read_text().splitlines()) == SIZES["test"]

    cmd[cmd.index(f"model={tiny_model}")] = f"model={tmp_path / 'missing'}"
    proc = subprocess.run(
        cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "missing' does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_max_train_examples_takes_the_same_subset_for_every_seed(sequence_files, token_files):
    from pretrain.finetune.config import TaskConfig
    from pretrain.finetune.task_data import load_task_data

    def task(files, **kw) -> TaskConfig:
        paths = dict(o.removeprefix("task.").split("=", 1) for o in files)
        return TaskConfig(name="t", **paths, **kw)

    full = load_task_data(task(sequence_files, type="sequence_classification"))
    sub = load_task_data(
        task(sequence_files, type="sequence_classification", max_train_examples=50)
    )
    again = load_task_data(
        task(sequence_files, type="sequence_classification", max_train_examples=50)
    )
    assert len(full.records["train"]) == SIZES["train"] and len(sub.records["train"]) == 50
    assert sub.records["train"] == again.records["train"]
    assert all(r in full.records["train"] for r in sub.records["train"])
    assert sub.records["dev"] == full.records["dev"] and sub.records["test"] == full.records["test"]
    # One tagged tweet: the label set still comes from the whole training split.
    tokens = load_task_data(task(token_files, type="token_classification", max_train_examples=1))
    assert tokens.labels == load_task_data(task(token_files, type="token_classification")).labels
    with pytest.raises(ValueError, match="max_train_examples"):
        task(sequence_files, max_train_examples=0)


def test_encoder_dropout_can_be_switched_back_on_for_fine_tuning(prepared_english, tmp_path):
    """A model pretrained without dropout fine-tunes with `hidden_dropout`/`attention_dropout`
    set: the same weights, the new rates in every dropout of the encoder; None keeps the model's."""
    from dataclasses import replace

    from pretrain.finetune.config import FinetuneConfig
    from pretrain.finetune.encoder import build_encoder

    torch.manual_seed(0)
    cfg = replace(
        preset("bert-tiny", vocab_size=1000, max_position_embeddings=64),
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    source = BertForPreTraining(cfg)
    tokenizer = prepared_english / "tokenizer"
    path = export_hf(Pretrained(source, cfg, tokenizer, source=Path("x")), tmp_path / "model")

    def rates(encoder) -> set[float]:
        ps = {m.p for m in encoder.modules() if isinstance(m, torch.nn.Dropout)}
        return ps | {layer.attention.attention_dropout for layer in encoder.layers}

    kept, kept_cfg, _, _ = build_encoder(FinetuneConfig(model_path=str(path)))
    assert rates(kept) == {0.0} and kept_cfg.hidden_dropout == 0.0
    on = FinetuneConfig(model_path=str(path), hidden_dropout=0.1, attention_dropout=0.1)
    encoder, enc_cfg, _, _ = build_encoder(on)
    assert rates(encoder) == {0.1} and enc_cfg.hidden_dropout == enc_cfg.attention_dropout == 0.1
    for name, tensor in source.bert.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], tensor, rtol=0, atol=0)
    random_encoder, _, _, _ = build_encoder(replace(on, init="random"))
    assert rates(random_encoder) == {0.1}
    with pytest.raises(ValueError, match="hidden_dropout must be in"):
        FinetuneConfig(model_path=str(path), hidden_dropout=1.0)


def test_reinit_pooler_restarts_only_the_pooler_and_only_for_a_pretrained_model(
    prepared_english, tmp_path
):
    from pretrain.finetune.config import FinetuneConfig
    from pretrain.finetune.encoder import build_encoder

    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=1000, max_position_embeddings=64)
    source = BertForPreTraining(cfg)
    with torch.no_grad():
        source.bert.pooler.weight.fill_(0.5)  # far from any fresh init
        source.bert.pooler.bias.fill_(0.5)
    path = export_hf(
        Pretrained(source, cfg, prepared_english / "tokenizer", source=Path("x")),
        tmp_path / "model",
    )
    kept, _, _, _ = build_encoder(FinetuneConfig(model_path=str(path)))
    fresh, _, _, _ = build_encoder(FinetuneConfig(model_path=str(path), reinit_pooler=True))
    again, _, _, _ = build_encoder(FinetuneConfig(model_path=str(path), reinit_pooler=True))
    assert torch.all(kept.pooler.weight == 0.5)
    assert torch.all(fresh.pooler.bias == 0) and torch.equal(
        fresh.pooler.weight, again.pooler.weight
    )
    assert abs(fresh.pooler.weight.std().item() - cfg.initializer_range) < 0.002
    for (name, p), q in zip(kept.named_parameters(), fresh.parameters(), strict=True):
        if not name.startswith("pooler."):
            assert torch.equal(p, q), name
    # A random init is the same model with or without the flag (same seed).
    rand = FinetuneConfig(model_path=str(path), init="random")
    a, _, _, _ = build_encoder(rand)
    b, _, _, _ = build_encoder(
        FinetuneConfig(model_path=str(path), init="random", reinit_pooler=True)
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_mean_pooling_averages_the_real_tokens_only():
    """pooling=mean: the head reads the mean of the last hidden states over attention_mask, so
    padding (any ids, any length) does not change a sequence's logits; pooling=cls reads the
    pooler output."""
    from pretrain.config import OptimConfig, ScheduleConfig
    from pretrain.finetune.module import FinetuneModule

    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=100, max_position_embeddings=16)
    encoder = BertForPreTraining(cfg).bert.eval()

    def module(pooling):
        m = FinetuneModule(encoder, "sequence_classification", 2, 0.0, OptimConfig(),
                           ScheduleConfig(), 10, None, pooling)  # fmt: skip
        torch.manual_seed(1)
        torch.nn.init.normal_(m.head.weight)
        return m.eval()

    ids = torch.tensor([[2, 11, 12, 13, 3, 0, 0], [2, 21, 3, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}
    mean, cls = module("mean"), module("cls")
    with torch.no_grad():
        hidden, pooled = encoder(ids, batch["token_type_ids"], mask)
        expected = torch.stack([hidden[0, :5].mean(0), hidden[1, :3].mean(0)])
        torch.testing.assert_close(mean(batch), mean.head(expected))
        torch.testing.assert_close(cls(batch), cls.head(pooled))
        other_padding = {**batch, "input_ids": ids.masked_fill(mask == 0, 7)}
        torch.testing.assert_close(mean(other_padding), mean(batch), rtol=0, atol=1e-6)
        short = {k: v[1:, :3] for k, v in batch.items()}  # the second row without its padding
        torch.testing.assert_close(mean(short)[0], mean(batch)[1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="pooling='max' is unknown"):
        from pretrain.finetune.config import FinetuneConfig

        FinetuneConfig(model_path="m", pooling="max")
