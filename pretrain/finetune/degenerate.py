"""Is a fine-tuned classifier degenerate on a split, i.e. does it answer (almost) the same thing
whatever the input? Such a run scores what a constant answer scores (the majority class's share
for sequences, 0 entity F1 for tokens) and has learned nothing; `bert-finetune` says so in its
summary and metrics.json, `pretrain.finetune.compare` marks it, and `optim.lr=auto` ranks it below
every run that is not.

The rule, one threshold (`DEGENERATE_SHARE`, 0.98) for both task types:
- sequences: at least 98 % of the split's predictions are one label, while the gold labels are
  less concentrated than that (no label holds 98 % of them: on such a split a constant answer is
  indistinguishable from a good model);
- tokens: the predicted entities number at most 2 % (1 − 0.98) of the gold entities (on a split
  with gold entities), i.e. the tagger (almost) only answers `O`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pretrain.finetune.data import SEQUENCE
from pretrain.finetune.metrics import bio_entities

DEGENERATE_SHARE = 0.98
"""See the module docstring: the share of one predicted label (sequences), or 1 − the ratio of
predicted to gold entities (tokens), from which a split's predictions count as degenerate."""
OUTSIDE = "O"


def check_sequences(gold: Sequence[str], pred: Sequence[str]) -> dict:
    """The verdict on one split of a sequence classifier, with what it rests on: the most
    frequent prediction and its share, the majority gold label and the accuracy of always
    answering it (the split's own most frequent label), beside the run's accuracy."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and predictions differ in length: {len(gold)} vs {len(pred)}")
    n = len(gold)
    if n == 0:
        return {"degenerate": False}
    top, top_count = Counter(pred).most_common(1)[0]
    majority, majority_count = Counter(gold).most_common(1)[0]
    top_share, majority_share = top_count / n, majority_count / n
    return {
        "degenerate": top_share >= DEGENERATE_SHARE and majority_share < DEGENERATE_SHARE,
        "top_prediction": top,
        "top_prediction_share": top_share,
        "majority_label": majority,
        "majority_accuracy": majority_share,
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / n,
    }


def check_tokens(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """The verdict on one split of a BIO tagger: predicted against gold entity counts, the share
    of predicted tags that are `O`, and the token accuracy of answering `O` everywhere beside the
    run's."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and predictions differ in length: {len(gold)} vs {len(pred)}")
    gold_entities = sum(len(bio_entities(tags)) for tags in gold)
    pred_entities = sum(len(bio_entities(tags)) for tags in pred)
    gold_tags = [t for tags in gold for t in tags]
    pred_tags = [t for tags in pred for t in tags]
    n = len(gold_tags)
    if n == 0:
        return {"degenerate": False}
    return {
        "degenerate": gold_entities > 0 and pred_entities <= (1 - DEGENERATE_SHARE) * gold_entities,
        "predicted_entities": pred_entities,
        "gold_entities": gold_entities,
        "outside_share": pred_tags.count(OUTSIDE) / max(1, len(pred_tags)),
        "majority_label": OUTSIDE,
        "majority_token_accuracy": gold_tags.count(OUTSIDE) / n,
        "token_accuracy": sum(g == p for g, p in zip(gold_tags, pred_tags, strict=True)) / n,
    }


def check(task_type: str, rows: Sequence[dict]) -> dict:
    """The verdict from the rows `pretrain.finetune.module.evaluate` writes (the lines of
    test_predictions.jsonl): `label`/`prediction` for sequences, `tags`/`predictions` for tokens."""
    if task_type == SEQUENCE:
        return check_sequences([r["label"] for r in rows], [r["prediction"] for r in rows])
    return check_tokens([r["tags"] for r in rows], [r["predictions"] for r in rows])


def describe(split: str, verdict: dict) -> str:
    """What a degenerate split's predictions look like, in words (no advice)."""
    if "top_prediction" in verdict:
        return (
            f"predicts {verdict['top_prediction']!r} for "
            f"{100 * verdict['top_prediction_share']:.1f} % of {split} examples; majority-class "
            f"accuracy {verdict['majority_accuracy']:.4f} vs this accuracy {verdict['accuracy']:.4f}"
        )
    return (
        f"predicts {verdict['predicted_entities']} entities on {split} "
        f"(gold: {verdict['gold_entities']}), {100 * verdict['outside_share']:.1f} % of tags O; "
        f"all-O token accuracy {verdict['majority_token_accuracy']:.4f} vs this token accuracy "
        f"{verdict['token_accuracy']:.4f}"
    )


def advice(lr: float, max_epochs: int, lr_auto: bool) -> str:
    """What to change: a run that answers one class was usually trained at a learning rate too
    high (it collapsed) or too low (it never left the majority class), or too briefly."""
    more = f"more epochs (trainer.max_epochs={max_epochs} now)"
    if lr_auto:
        return (
            f"try other learning rates (optim.lr_auto_grid; it chose {lr:g}), {more}, "
            "or a fixed optim.lr"
        )
    return f"try a lower or higher lr (optim.lr={lr:g} now), {more}, or optim.lr=auto"


def summary_lines(verdicts: dict[str, dict], hint: str) -> list[str]:
    """One `degenerate: ...` line per degenerate split, for the printed summary."""
    return [
        f"  degenerate: {describe(split, v)}; {hint}"
        for split, v in verdicts.items()
        if v.get("degenerate")
    ]
