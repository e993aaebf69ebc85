"""Fine-tuning metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from pretrain.finetune.metrics import (
    accuracy,
    bio_entities,
    entity_metrics,
    macro_f1,
    mcc,
    sequence_metrics,
)


def test_accuracy_macro_f1_and_mcc_on_a_binary_case():
    gold = ["a", "a", "a", "b", "b"]
    pred = ["a", "a", "b", "b", "a"]
    assert accuracy(gold, pred) == pytest.approx(3 / 5)
    # class a: tp 2, fp 1, fn 1 -> F1 2/3; class b: tp 1, fp 1, fn 1 -> F1 1/2
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # tp=1 (b), tn=2, fp=1, fn=1: (2·1 − 1·1) / sqrt(2·2·3·3) = 1/6
    assert mcc(gold, pred) == pytest.approx(1 / 6)


def test_mcc_multiclass_perfect_inverse_and_constant():
    assert mcc([0, 1, 2, 0], [0, 1, 2, 0]) == pytest.approx(1.0)
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert mcc([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0  # undefined: a constant prediction
    # 3 classes, hand-computed: n=6, correct c=5, gold counts t=(2,2,2), predicted p=(3,2,1):
    # (c·n − Σ t·p) / sqrt((n² − Σ p²)(n² − Σ t²)) = (30 − 12) / sqrt((36 − 14)(36 − 12))
    assert mcc([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 0, 2]) == pytest.approx(18 / math.sqrt(528))


def test_macro_f1_counts_a_class_only_predicted():
    # gold only "x"; "y" predicted once: F1(x) = 2·1/(2·1+0+1) = 2/3, F1(y) = 0
    assert macro_f1(["x", "x"], ["x", "y"]) == pytest.approx(1 / 3)
    assert sequence_metrics([1, 1], [1, 1]) == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 0.0}


def test_lengths_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1], [1, 2])


@pytest.mark.parametrize(
    ("tags", "entities"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["I-PER", "I-PER", "O"], {("PER", 0, 2)}),  # I- without B- starts an entity
        (["O", "I-LOC"], {("LOC", 1, 2)}),
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # type change
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),  # B- after B-
        (["B-PER"], {("PER", 0, 1)}),  # entity at the very end
        (["O", "O"], set()),
        (["B-geo-loc", "I-geo-loc"], {("geo-loc", 0, 2)}),  # types with hyphens
    ],
)
def test_bio_entities(tags, entities):
    assert bio_entities(tags) == entities


def test_entity_precision_recall_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG"]]
    # gold entities: PER(0,2), LOC(3,4), ORG(1,2); predicted: PER(0,2), ORG(0,2): 1 correct
    m = entity_metrics(gold, pred)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert m["token_accuracy"] == pytest.approx(3 / 6)


def test_entity_boundaries_and_types_must_match_exactly():
    gold = [["B-PER", "I-PER", "I-PER"]]
    assert entity_metrics(gold, [["B-PER", "I-PER", "O"]])["f1"] == 0.0  # too short
    assert entity_metrics(gold, [["B-LOC", "I-LOC", "I-LOC"]])["f1"] == 0.0  # wrong type
    assert entity_metrics(gold, [["I-PER", "I-PER", "I-PER"]])["f1"] == 1.0  # I- start counts
    none = entity_metrics([["O"]], [["O"]])
    assert none["precision"] == none["recall"] == none["f1"] == 0.0
