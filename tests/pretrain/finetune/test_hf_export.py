"""`bert-export` of a `bert-finetune` run: a tiny fine-tuning of each task type, exported, loads in
transformers' Auto classes with no missing or unexpected keys, and its pipelines agree with the run's
own predictions; heads transformers cannot represent and occupied output directories are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.errors import UserError
from pretrain.export import export_finetuned
from pretrain.finetune.data import Collator, encode
from pretrain.finetune.encoder import load_tokenizer
from pretrain.finetune.finetuned import load_finetuned
from pretrain.integrity import load_weights_only
from tests.finetune_rows import finetune_tiny

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sequence_run(tiny_model, sequence_files, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("seq_run")
    finetune_tiny(work, "task=sequence_classification", "task.name=kw", f"model_path={tiny_model}",
        "trainer.max_epochs=3", *sequence_files)  # fmt: skip
    return work / "finetune" / "kw-pretrained-s1234"


@pytest.fixture(scope="module")
def token_run(tiny_model, token_files, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tok_run")
    finetune_tiny(work, "task=token_classification", "task.name=ph", f"model_path={tiny_model}",
        "trainer.max_epochs=3", *token_files)  # fmt: skip
    return work / "finetune" / "ph-pretrained-s1234"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "test_predictions.jsonl").open()]


def our_logits(run: Path, records: list[dict]) -> tuple[torch.Tensor, list]:
    """Logits of the run's own model (its best checkpoint, read back) for `records`."""
    ft = load_finetuned(run)
    tokenizer = load_tokenizer(ft.tokenizer_dir, ft.config)
    label_to_id = {label: i for i, label in enumerate(ft.labels)}
    data = encode(tokenizer, ft.task_type, records, label_to_id, 32)
    batch = Collator(0)([data[i] for i in range(len(data))])
    return ft.logits(batch), data.items


def loads_cleanly(auto_class, out: Path):
    model, info = auto_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model


def test_sequence_run_exports_a_text_classifier(sequence_run, tmp_path):
    out = export_finetuned(sequence_run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "no", "1": "yes"} and config["label2id"] == {
        "no": 0,
        "yes": 1,
    }
    assert {"tokenizer.json", "vocab.txt", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    metrics = json.loads((sequence_run / "metrics.json").read_text())
    assert "pipeline_tag: text-classification" in card and "## Test metrics" in card
    assert f"| accuracy | {metrics['test']['accuracy']:.4f} |" in card
    loads_cleanly(transformers.AutoModelForSequenceClassification, out)

    predicted = rows(sequence_run)
    classify = transformers.pipeline("text-classification", model=str(out), top_k=None)
    results = classify([r["text"] for r in predicted])
    logits, _ = our_logits(sequence_run, predicted)
    ours = logits.softmax(-1)
    for row, result, probs in zip(predicted, results, ours, strict=True):
        assert result[0]["label"] == row["prediction"]  # sorted by score: the argmax first
        for entry in result:
            assert entry["score"] == pytest.approx(float(probs[config["label2id"][entry["label"]]]),
                abs=1e-4)  # fmt: skip


def entity_groups(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """(type, text) groups as transformers' `aggregation_strategy` groups word labels: `O` words
    dropped, then a word joins the previous group when of the same type and not `B-`."""
    groups: list[list] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        bi, kind = tag.split("-", 1)
        if groups and groups[-1][0] == kind and bi != "B":
            groups[-1][2] = i
        else:
            groups.append([kind, i, i])
    return [(kind, " ".join(words[a : b + 1])) for kind, a, b in groups]


def test_token_run_exports_a_token_classifier(token_run, tmp_path):
    out = export_finetuned(token_run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "O", "1": "B-KEY", "2": "I-KEY"}
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "pooler" in k]  # noqa: SIM118 (no pooler in BertForTokenClassification)
    loads_cleanly(transformers.AutoModelForTokenClassification, out)

    predicted = rows(token_run)
    logits, items = our_logits(token_run, predicted)
    labels = ["O", "B-KEY", "I-KEY"]
    tagger = transformers.pipeline("token-classification", model=str(out),
        aggregation_strategy="first")  # fmt: skip
    texts = [" ".join(r["tokens"]) for r in predicted]
    found = 0
    for row, item, piece_logits, result in zip(
        predicted, items, logits, tagger(texts), strict=True
    ):
        ours = [labels[int(piece_logits[p].argmax())] for p in item.first_piece]
        assert ours == row["predictions"]  # the checkpoint read back is the run's model
        text = " ".join(row["tokens"])
        theirs = [(e["entity_group"], text[e["start"] : e["end"]]) for e in result]
        assert theirs == entity_groups(row["tokens"], row["predictions"]), (row, result)
        found += len(theirs)
    assert found  # the comparison saw entities, not only empty lists


def test_heads_transformers_cannot_represent_are_refused(
    tiny_model, sequence_files, sequence_run, tmp_path
):
    finetune_tiny(tmp_path, "task=sequence_classification", "task.name=mean", "pooling=mean",
        f"model_path={tiny_model}", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        *sequence_files)  # fmt: skip
    with pytest.raises(UserError, match=r"pooling='mean' has no transformers equivalent.*"
        r"checkpoint can still be used directly") as err:  # fmt: skip
        export_finetuned(tmp_path / "finetune" / "mean-pretrained-s1234", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

    # a head of another layout (here: an extra layer) than dropout + linear
    other = tmp_path / "other_head"
    shutil.copytree(sequence_run, other)
    ckpt = other / "checkpoints" / "best.ckpt"
    saved = load_weights_only(ckpt)
    saved["state_dict"]["head_hidden.weight"] = torch.zeros(4, 4)
    ckpt.unlink()
    for sidecar in ckpt.parent.glob("best.ckpt.*"):
        sidecar.unlink()
    torch.save(saved, ckpt)
    with pytest.raises(UserError, match=r"does not hold this run's encoder and linear head"):
        export_finetuned(other, tmp_path / "out")


def test_output_dir_rules_still_apply(sequence_run, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and not an earlier export"):
        export_finetuned(sequence_run, occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"
    out = export_finetuned(sequence_run, tmp_path / "hf")
    with pytest.raises(UserError, match="pass overwrite=true"):
        export_finetuned(sequence_run, out)
    export_finetuned(sequence_run, out, overwrite=True)
    assert not list(tmp_path.glob(".hf.*"))  # no temporaries left


@pytest.mark.e2e
def test_bert_export_command_takes_a_finetune_run(sequence_run, tmp_path, app_env):
    out = tmp_path / "hf"
    cmd = [
        sys.executable,
        "-m",
        "pretrain.export",
        f"checkpoint={sequence_run}",
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, env=app_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported fine-tuned run" in proc.stdout and (out / "model.safetensors").is_file()
