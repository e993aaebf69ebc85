"""`bert-predict` on tiny fine-tuned runs: the run's own test labels reproduced, probabilities,
input order under length-sorted batching, entity spans, embeddings and every user error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.errors import UserError
from tests.finetune_rows import finetune_tiny

EPOCHS = ["trainer.max_epochs=2"]


def task_path(files: list[str], split: str) -> Path:
    return Path(next(o for o in files if o.startswith(f"task.{split}=")).split("=", 1)[1])


@pytest.fixture(scope="module")
def sequence_run(tiny_model, sequence_files, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("predict_seq")
    finetune_tiny(work, "task=sequence_classification", "task.name=kw",
                  f"model_path={tiny_model}", *EPOCHS, *sequence_files)  # fmt: skip
    return work / "finetune" / "kw-pretrained-s1234"


@pytest.fixture(scope="module")
def token_run(tiny_model, token_files, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("predict_tok")
    finetune_tiny(work, "task=token_classification", "task.name=ph",
                  f"model_path={tiny_model}", "trainer.max_epochs=4", *token_files)  # fmt: skip
    return work / "finetune" / "ph-pretrained-s1234"


def predict(tmp_path: Path, *overrides: str):
    """`bert-predict` in this process, composed from conf/predict.yaml as the command line is."""
    from hydra import compose, initialize_config_dir

    from pretrain.config_path import CONF_DIR
    from pretrain.finetune.predict import command_line, predict, register_configs, to_typed

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=command_line(list(overrides)))
    return predict(to_typed(cfg))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_labels_equal_the_runs_own_test_predictions(sequence_run, sequence_files, tmp_path):
    out = tmp_path / "pred.jsonl"
    rows = predict(tmp_path, f"model={sequence_run}", f"input={task_path(sequence_files, 'test')}",
                   f"output={out}", "batch_size=7")  # fmt: skip
    expected = read_jsonl(sequence_run / "test_predictions.jsonl")
    written = read_jsonl(out)
    assert written == rows and len(rows) == len(expected)
    assert [r["text"] for r in rows] == [e["text"] for e in expected]
    assert [r["label"] for r in rows] == [e["prediction"] for e in expected]
    for r in rows:
        assert set(r["probabilities"]) == {"no", "yes"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    # csv: one probability column per label
    predict(tmp_path, f"model={sequence_run}", f"input={task_path(sequence_files, 'test')}",
            f"output={tmp_path / 'pred.csv'}")  # fmt: skip
    with open(tmp_path / "pred.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["text", "label", "prob_no", "prob_yes"]
    assert [t["label"] for t in table] == [r["label"] for r in rows]


def test_order_of_outputs_is_the_order_of_inputs(sequence_run, sequence_files, tmp_path):
    """Texts of very different lengths in a .txt, batched by length: each output is the text's
    own prediction, made alone, and sits at the text's line."""
    from pretrain.finetune.predict import length_batches

    rows = read_jsonl(sequence_run / "test_predictions.jsonl")
    words = " ".join(r["text"] for r in rows).split()
    texts = [" ".join(words[i : i + 1 + (i * 5) % 12]) for i in range(12)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    batched = predict(tmp_path, f"model={sequence_run}", f"input={tmp_path / 'in.txt'}",
                      f"output={tmp_path / 'o.jsonl'}", "batch_size=4")  # fmt: skip
    assert length_batches([len(t) for t in texts], 4) != [list(range(i, i + 4)) for i in (0, 4, 8)]
    assert [r["text"] for r in batched] == texts
    for text, row in zip(texts, batched, strict=True):
        alone = predict(tmp_path, f"model={sequence_run}", f"text={text}")[0]
        assert alone["label"] == row["label"]
        for label, p in alone["probabilities"].items():
            assert row["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_one_text_is_printed(sequence_run, tmp_path, capsys):
    rows = predict(tmp_path, f"model={sequence_run}", "text=commas, colons: kept")
    assert rows[0]["text"] == "commas, colons: kept"
    printed = capsys.readouterr()
    assert json.loads(printed.out.splitlines()[-1]) == rows[0]
    assert "texts/s" in printed.err


def test_token_spans_are_the_runs_entities(token_run, token_files, tmp_path):
    records = read_jsonl(token_run / "test_predictions.jsonl")
    texts = [" ".join(r["tokens"]) for r in records]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts))
    rows = predict(tmp_path, f"model={token_run}", f"input={tmp_path / 'in.jsonl'}",
                   "text_column=sentence", f"output={tmp_path / 'spans.jsonl'}")  # fmt: skip
    assert read_jsonl(tmp_path / "spans.jsonl") == rows
    found = 0
    for record, text, row in zip(records, texts, rows, strict=True):
        expected = bio_spans(record["tokens"], record["predictions"])
        assert [(s["text"], s["label"]) for s in row["entities"]] == expected
        for span in row["entities"]:
            assert text[span["start"] : span["end"]] == span["text"] and 0 < span["score"] <= 1
        found += len(expected)
    assert found > 0  # the run learned to find the key phrase


def bio_spans(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """transformers' grouping of word tags: B- opens, I- of the same type continues."""
    spans: list[tuple[list[str], str]] = []
    kind_before = None
    for word, tag in zip(words, tags, strict=True):
        kind = None if tag == "O" else tag[2:]
        if kind is not None and kind == kind_before and tag.startswith("I-"):
            spans[-1][0].append(word)
        elif kind is not None:
            spans.append(([word], kind))
        kind_before = kind
    return [(" ".join(w), k) for w, k in spans]


def test_aggregation_first_takes_each_words_first_piece():
    """Pieces of one word follow its first piece's label; B-/I- merge; I- after O opens a span;
    O is dropped; the score is the mean of the words' first-piece probabilities."""
    from types import SimpleNamespace

    from pretrain.finetune.predict import entity_spans

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    text = "Annabel Lee of Kingdom by the sea"
    # [CLS] ann ##abel lee of king ##dom by the sea [SEP]
    word_ids = [None, 0, 0, 1, 2, 3, 3, 4, 5, 6, None]
    offsets = [(0, 0), (0, 3), (3, 7), (8, 11), (12, 14), (15, 19), (19, 22), (23, 25), (26, 29),
               (30, 33), (0, 0)]  # fmt: skip
    piece_labels = [0, 1, 3, 2, 0, 4, 0, 0, 0, 3, 0]  # ##abel (LOC) and ##dom (O) are ignored
    probs = np.full((len(word_ids), len(labels)), 0.05)
    for pos, label in enumerate(piece_labels):
        probs[pos, label] = 0.8
    probs[3, 2] = 0.6
    enc = SimpleNamespace(word_ids=word_ids, offsets=offsets)
    spans = entity_spans(enc, probs, labels, text)
    assert [(s["text"], s["label"], s["start"], s["end"]) for s in spans] == [
        ("Annabel Lee", "PER", 0, 11),
        ("Kingdom", "LOC", 15, 22),
        ("sea", "LOC", 30, 33),
    ]
    assert spans[0]["score"] == pytest.approx(0.7)


def test_long_texts_are_truncated_and_counted(token_run, tmp_path, capsys):
    long = " ".join(["word"] * 200)
    rows = predict(tmp_path, f"model={token_run}", f"text={long}", "max_length=16")
    assert all(s["end"] <= len(long) for s in rows[0]["entities"])
    assert "1 of 1 texts were longer than 16 WordPieces" in capsys.readouterr().err


def test_embeddings(tiny_model, sequence_run, tmp_path):
    from pretrain.model import preset

    hidden = preset("bert-tiny", vocab_size=1000).hidden_size
    texts = ["a short one", "a much longer text than the others, with more words in it", "x"]
    (tmp_path / "in.txt").write_text("\n".join(texts))
    mean = predict(tmp_path, f"model={tiny_model}", "task=embed", f"input={tmp_path / 'in.txt'}",
                   f"output={tmp_path / 'v.npy'}", "batch_size=2")  # fmt: skip
    assert mean.shape == (3, hidden) and mean.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), mean)
    alone = predict(tmp_path, f"model={tiny_model}", "task=embed", f"text={texts[1]}")
    np.testing.assert_allclose(alone[0], mean[1], atol=1e-5)  # padding does not count
    cls = predict(tmp_path, f"model={tiny_model}", "task=embed", "pooling=cls",
                  f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'v.parquet'}")  # fmt: skip
    assert cls.shape == (3, hidden) and not np.allclose(cls, mean)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["text"] == texts and np.allclose(np.array(table["embedding"]), cls)
    tuned = predict(tmp_path, f"model={sequence_run}", "task=embed", f"text={texts[0]}")
    assert tuned.shape == (1, hidden) and not np.allclose(tuned[0], mean[0])


def test_errors_name_the_fix(sequence_run, tiny_model, tmp_path):
    good = tmp_path / "in.csv"
    good.write_text("review\nfine\n")
    out = f"output={tmp_path / 'o.jsonl'}"
    # a pretraining run (or export) has no classification head
    pretrain_run = tmp_path / "runs" / "tiny"
    (pretrain_run / "checkpoints").mkdir(parents=True)
    (pretrain_run / "config.yaml").write_text("name: tiny\n")
    for model in (pretrain_run, tiny_model):
        with pytest.raises(UserError, match=r"not a bert-finetune run .*or use task=embed"):
            predict(tmp_path, f"model={model}", "text=hello")
    with pytest.raises(UserError, match=r"has no column 'text'; its columns are \['review'\]: "
                       r"set text_column="):  # fmt: skip
        predict(tmp_path, f"model={sequence_run}", f"input={good}", out)
    assert predict(tmp_path, f"model={sequence_run}", f"input={good}", out, "text_column=review")
    for name, content in (("empty.txt", "\n\n"), ("empty.jsonl", ""), ("empty.csv", "text\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match="holds no"):
            predict(tmp_path, f"model={sequence_run}", f"input={tmp_path / name}", out)
    with pytest.raises(UserError, match=r"does not exist; give a \.txt"):
        predict(tmp_path, f"model={sequence_run}", f"input={tmp_path / 'nope.txt'}", out)
    with pytest.raises(UserError, match=r"unknown extension '\.xlsx'; use \.jsonl or \.csv"):
        predict(tmp_path, f"model={sequence_run}", f"input={good}", "output=o.xlsx")
    with pytest.raises(UserError, match=r"use \.npy or \.parquet"):
        predict(tmp_path, f"model={tiny_model}", "task=embed", f"input={good}", out)
    with pytest.raises(UserError, match="unknown config key batchsize"):
        predict(tmp_path, f"model={sequence_run}", "text=x", "+batchsize=3")


def test_a_crafted_checkpoint_in_a_run_is_refused_and_never_runs(sequence_run, tmp_path):
    """Someone replaced the run's best.ckpt (and its checksum) with a pickle that runs code."""
    import shutil

    import torch

    from pretrain.integrity import checksum_path
    from tests.faults import booby_trapped

    run = tmp_path / "run"
    shutil.copytree(sequence_run, run)
    best = run / "checkpoints" / "best.ckpt"
    marker = tmp_path / "pwned"
    contents = torch.load(best, weights_only=True)  # not memory-mapped: the file is rewritten
    booby_trapped(best, marker, contents)
    checksum_path(best).unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"refusing to load .*best\.ckpt.*posix\.system"):
        predict(tmp_path, f"model={run}", "text=hello")
    assert not marker.exists()
    assert torch.load(best, weights_only=False) and marker.exists()  # the trap is real


@pytest.mark.e2e
def test_bert_predict_command(sequence_run, sequence_files, tmp_path, app_env):
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "pretrain.finetune.predict", f"model={sequence_run}",
           f"input={task_path(sequence_files, 'test')}", f"output={out}"]  # fmt: skip
    proc = subprocess.run(cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "texts/s" in proc.stderr and "Traceback" not in proc.stderr
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(
            read_jsonl(sequence_run / "test_predictions.jsonl")
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # Hydra writes nothing else
