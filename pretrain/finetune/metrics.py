"""Fine-tuning metrics, written out (no seqeval / scikit-learn dependency).

Sequences: accuracy, macro F1 (unweighted mean of per-class F1 over the classes that occur in the
gold labels or the predictions), Matthews correlation (multi-class form, Gorodkin 2004).

Tokens: entity-level precision / recall / F1 over BIO tags, CoNLL style: an entity is a maximal run
`B-X I-X ...`; an `I-X` that does not continue an entity of type X (after `O`, at the start, or
after another type) starts a new entity, as conlleval does; a prediction counts only when its type,
start and end all match a gold entity.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def accuracy(gold: Sequence, pred: Sequence) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(gold: Sequence, pred: Sequence) -> float:
    _same_length(gold, pred)
    classes = sorted(set(gold) | set(pred), key=str)
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def mcc(gold: Sequence, pred: Sequence) -> float:
    """Matthews correlation; 0 when it is undefined (a constant gold or prediction)."""
    _same_length(gold, pred)
    n = len(gold)
    if n == 0:
        return 0.0
    correct = sum(g == p for g, p in zip(gold, pred, strict=True))
    t, p = Counter(gold), Counter(pred)
    classes = set(t) | set(p)
    cov_tp = correct * n - sum(t[c] * p[c] for c in classes)
    cov_pp = n * n - sum(p[c] ** 2 for c in classes)
    cov_tt = n * n - sum(t[c] ** 2 for c in classes)
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return cov_tp / math.sqrt(cov_pp * cov_tt)


def sequence_metrics(gold: Sequence, pred: Sequence) -> dict[str, float]:
    return {
        "accuracy": accuracy(gold, pred),
        "macro_f1": macro_f1(gold, pred),
        "mcc": mcc(gold, pred),
    }


def bio_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """`(type, start, end_exclusive)` of each entity in one sentence's BIO tags."""
    entities = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and typ == kind
        if kind is not None and not continues:
            entities.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = typ, i
    return entities


def entity_metrics(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged entity precision / recall / F1 over sentences, plus token accuracy."""
    _same_length(gold, pred)
    tp = n_pred = n_gold = 0
    tokens = correct_tokens = 0
    for g, p in zip(gold, pred, strict=True):
        _same_length(g, p)
        ge, pe = bio_entities(g), bio_entities(p)
        tp += len(ge & pe)
        n_pred += len(pe)
        n_gold += len(ge)
        tokens += len(g)
        correct_tokens += sum(a == b for a, b in zip(g, p, strict=True))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "token_accuracy": correct_tokens / tokens if tokens else 0.0,
    }


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"gold and predictions differ in length: {len(a)} vs {len(b)}")
