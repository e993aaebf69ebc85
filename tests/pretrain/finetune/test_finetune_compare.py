"""The side-by-side table of `pretrain.finetune.compare` (the runs themselves: tests/pretrain/finetune/test_finetune.py)."""

from __future__ import annotations

import json
import os

from pretrain.finetune.compare import (
    FINGERPRINT_FILE,
    finished_earlier,
    format_table,
    majority_accuracy,
    model_fingerprint,
    summarize,
)


def test_summary_table_means_each_init_over_seeds():
    runs = [
        {"task": "rt", "metric": "accuracy", "init": init, "seed": seed, "test": {"accuracy": acc}}
        for init, seed, acc in [
            ("pretrained", 1, 0.70),
            ("random", 1, 0.60),
            ("pretrained", 2, 0.80),
            ("random", 2, 0.62),
        ]
    ]
    table = summarize(runs)
    assert table == {
        "rt": {"metric": "accuracy", "pretrained": [0.70, 0.80], "random": [0.60, 0.62]}
    }
    text = format_table(table, [1, 2])
    assert (
        "| rt | accuracy | 0.7500 ± 0.0707 | 0.6100 ± 0.0141 | 0.700 / 0.600, 0.800 / 0.620 | - |"
        in text
    )


def test_one_arm_alone_fills_the_other_with_dashes():
    """`--inits pretrained` (a sweep of settings): the random arm's cells are empty, not dropped."""
    runs = [
        {
            "task": "rt",
            "metric": "accuracy",
            "init": "pretrained",
            "seed": s,
            "test": {"accuracy": a},
        }
        for s, a in [(1, 0.70), (2, 0.80)]
    ]
    text = format_table(summarize(runs), [1, 2])
    assert "| rt | accuracy | 0.7500 ± 0.0707 | - | 0.700 / -, 0.800 / - | - |" in text


def test_accuracy_rows_show_the_majority_class_score(tmp_path):
    """An arm that answers one class scores the majority share: the table prints it beside."""
    seq = tmp_path / "seq.jsonl"
    seq.write_text(
        "".join(json.dumps({"text": t, "label": y, "prediction": "a"}) + "\n"
                for t, y in [("x", "a"), ("y", "b"), ("z", "a"), ("w", "a")])
    )  # fmt: skip
    tok = tmp_path / "tok.jsonl"
    tok.write_text(json.dumps({"tokens": ["x"], "tags": ["O"], "predictions": ["O"]}) + "\n")
    runs = [
        {"task": "rt", "metric": "accuracy", "init": i, "seed": 1, "test": {"accuracy": 0.75},
         "predictions": str(seq)} for i in ("pretrained", "random")
    ] + [
        {"task": "ner", "metric": "f1", "init": i, "seed": 1, "test": {"f1": 0.2},
         "predictions": str(tok)} for i in ("pretrained", "random")
    ]  # fmt: skip
    table = summarize(runs)
    assert table["rt"]["majority"] == 0.75 and "majority" not in table["ner"]
    text = format_table(table, [1])
    assert "| 0.750 / 0.750 | 0.7500 |" in text and "| 0.200 / 0.200 | - |" in text
    assert majority_accuracy(tmp_path / "missing.jsonl") is None


def test_a_finished_run_is_reused_only_for_the_same_config_and_model(tmp_path):
    """Re-training the model at the same path must re-run the fine-tuning, not reuse old scores."""
    model = tmp_path / "runs" / "demo"
    (model / "checkpoints").mkdir(parents=True)
    ckpt = model / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"weights v1")
    out = tmp_path / "finetune" / "rt-pretrained-s1"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("lr: 1\n")
    (out / "metrics.json").write_text('{"test": {"accuracy": 0.7}}')
    fingerprint = model_fingerprint(model)
    assert finished_earlier(out, "lr: 1\n", fingerprint) is None  # no fingerprint recorded yet
    (out / FINGERPRINT_FILE).write_text(fingerprint)
    assert finished_earlier(out, "lr: 1\n", fingerprint) == {"test": {"accuracy": 0.7}}
    assert finished_earlier(out, "lr: 2\n", fingerprint) is None  # another config

    ckpt.write_bytes(b"weights v2")  # the model re-trained in place
    os.utime(ckpt, ns=(1, 1))
    assert model_fingerprint(model) != fingerprint
    assert finished_earlier(out, "lr: 1\n", model_fingerprint(model)) is None
    assert model_fingerprint(ckpt) != model_fingerprint(model)  # a file works too
