"""Degenerate classifiers are named, never silent: the rule (`pretrain/finetune/degenerate.py`),
`bert-finetune`'s summary line and metrics.json on tiny runs trained to collapse, and the `*` of
`pretrain.finetune.compare`'s table."""

from __future__ import annotations

import json

import pytest

from pretrain.finetune.compare import DEGENERATE_NOTE, format_table, summarize
from pretrain.finetune.degenerate import DEGENERATE_SHARE, check_sequences, check_tokens
from tests.finetune_rows import finetune_tiny, synthetic, vocabulary_words, write_splits


def test_sequences_one_label_for_98_percent_against_spread_gold():
    gold = ["a"] * 60 + ["b"] * 40
    verdict = check_sequences(gold, ["a"] * 98 + ["b"] * 2)
    assert verdict == {
        "degenerate": True,
        "top_prediction": "a",
        "top_prediction_share": 0.98,
        "majority_label": "a",
        "majority_accuracy": 0.6,
        "accuracy": 0.62,
    }
    assert not check_sequences(gold, ["a"] * 97 + ["b"] * 3)["degenerate"]  # 97 %: below
    # Gold itself 98 % one label: a constant answer cannot be told from a good model.
    assert not check_sequences(["a"] * 98 + ["b"] * 2, ["a"] * 100)["degenerate"]
    assert check_sequences([], []) == {"degenerate": False}
    assert DEGENERATE_SHARE == 0.98  # the documented threshold (module docstring, README)


def test_tokens_almost_no_predicted_entities():
    gold = [["B-X", "I-X", "O", "O"]] * 100  # 100 gold entities
    two = [["B-X", "I-X", "O", "O"]] * 2 + [["O"] * 4] * 98
    verdict = check_tokens(gold, two)
    assert verdict["degenerate"] and verdict["predicted_entities"] == 2
    assert verdict["gold_entities"] == 100 and verdict["majority_label"] == "O"
    assert verdict["majority_token_accuracy"] == 0.5 and verdict["outside_share"] == 0.99
    three = [["B-X", "I-X", "O", "O"]] * 3 + [["O"] * 4] * 97
    assert not check_tokens(gold, three)["degenerate"]  # 3 % of the gold entities
    assert not check_tokens([["O", "O"]], [["O", "O"]])["degenerate"]  # no gold entity: no verdict


@pytest.fixture(scope="module")
def one_sided(prepared_english, tmp_path_factory) -> dict[str, list[str]]:
    """The keyword tasks with every training example `no` / all `O`: a model that learns them
    answers one class on the balanced dev and test splits."""
    words = vocabulary_words(prepared_english / "tokenizer")
    root = tmp_path_factory.mktemp("one_sided")
    out = {}
    for tokens, fmt in ((False, "csv"), (True, "jsonl")):
        rows = {s: synthetic(words, n, i, tokens) for i, (s, n) in enumerate(
            {"train": 64, "dev": 32, "test": 32}.items())}  # fmt: skip
        for r in rows["train"]:
            if tokens:
                r["tags"] = ["O"] * len(r["tags"])
            else:
                r["label"] = "no"
        out["tokens" if tokens else "sequences"] = write_splits(root / fmt, rows, fmt)
    return out


def test_a_collapsed_sequence_classifier_is_reported(tiny_model, one_sided, tmp_path, capsys):
    result = finetune_tiny(
        tmp_path, "task=sequence_classification", "task.name=one", f"model_path={tiny_model}",
        "task.labels=[no,yes]", "trainer.max_epochs=2", *one_sided["sequences"],
    )  # fmt: skip
    saved = json.loads(
        (tmp_path / "finetune" / "one-pretrained-s1234" / "metrics.json").read_text()
    )
    test = saved["degenerate"]["test"]
    assert saved["degenerate"]["threshold"] == DEGENERATE_SHARE
    assert test["degenerate"] is True and saved["degenerate"]["dev"]["degenerate"] is True
    assert test["top_prediction"] == "no" and test["top_prediction_share"] == 1.0
    assert test["majority_accuracy"] == 0.5 and test["accuracy"] == result["test"]["accuracy"]
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "degenerate:" in x and "test" in x]
    assert line == [
        "  degenerate: predicts 'no' for 100.0 % of test examples; majority-class accuracy "
        "0.5000 vs this accuracy 0.5000; try a lower or higher lr (optim.lr=0.001 now), more "
        "epochs (trainer.max_epochs=2 now), or optim.lr=auto"
    ]


def test_a_tagger_that_finds_no_entity_is_reported(tiny_model, one_sided, tmp_path, capsys):
    finetune_tiny(
        tmp_path, "task=token_classification", "task.name=none", f"model_path={tiny_model}",
        "task.labels=[O,B-KEY,I-KEY]", "trainer.max_epochs=2", *one_sided["tokens"],
    )  # fmt: skip
    saved = json.loads(
        (tmp_path / "finetune" / "none-pretrained-s1234" / "metrics.json").read_text()
    )
    test = saved["degenerate"]["test"]
    assert test["degenerate"] is True and test["predicted_entities"] == 0
    assert test["gold_entities"] == 16 and test["outside_share"] == 1.0
    assert (
        test["token_accuracy"] == test["majority_token_accuracy"] == saved["test"]["token_accuracy"]
    )
    assert saved["test"]["f1"] == 0.0
    out = capsys.readouterr().out
    assert "  degenerate: predicts 0 entities on test (gold: 16), 100.0 % of tags O; " in out


def test_compare_marks_degenerate_runs_and_keeps_their_scores():
    def run(init: str, seed: int, acc: float, collapsed: bool | None) -> dict:
        r = {"task": "rt", "metric": "accuracy", "init": init, "seed": seed,
             "test": {"accuracy": acc}}  # fmt: skip
        if collapsed is not None:  # None: a metrics.json without the verdict
            r["degenerate"] = {"test": {"degenerate": collapsed}}
        return r

    runs = [run("pretrained", 1, 0.70, False), run("random", 1, 0.50, True),
            run("pretrained", 2, 0.80, None), run("random", 2, 0.62, False)]  # fmt: skip
    table = summarize(runs)
    assert table["rt"]["random"] == [0.50, 0.62]  # kept in the mean
    assert table["rt"]["degenerate"] == {"pretrained": [False, False], "random": [True, False]}
    text = format_table(table, [1, 2])
    assert (
        "| rt | accuracy | 0.7500 ± 0.0707 | 0.5600 ± 0.0849 * | 0.700 / 0.500*, 0.800 / 0.620 |"
        in text
    )
    assert text.endswith(DEGENERATE_NOTE) and DEGENERATE_NOTE.startswith("* degenerate run:")
    clean = summarize([run("pretrained", 1, 0.7, False), run("random", 1, 0.6, False)])
    assert "degenerate" not in clean["rt"] and "*" not in format_table(clean, [1])


def test_early_stopping_waits_out_degenerate_epochs():
    """Five epochs of a tagger that finds nothing (F1 0), then it learns: plain early stopping with
    patience 3 ends the run at the fourth epoch; the run's own stops only once it has learned and
    then stalled for 3 epochs."""
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    from pretrain.finetune.app import PatientPastDegenerate

    scores = [0.0] * 5 + [0.1, 0.2, 0.2, 0.2, 0.2]
    flags = iter([True] * 5 + [False] * 5)
    ours = PatientPastDegenerate(lambda: next(flags), monitor="dev/f1", mode="max", patience=3)
    plain = EarlyStopping(monitor="dev/f1", mode="max", patience=3)
    stops = [ours._evaluate_stopping_criteria(torch.tensor(s))[0] for s in scores]
    assert stops.index(True) == 9 and ours.best_score == 0.2
    assert [plain._evaluate_stopping_criteria(torch.tensor(s))[0] for s in scores].index(True) == 3
