"""Does a pretrained model use word order, or is it still a bag of words (the "unigram plateau")?

Held-out MLM is scored twice on the same masked batch: as is, and with the unmasked tokens of
each pair shuffled among themselves (word order destroyed, the bag of words kept). A model that
uses its context loses a lot when the context is shuffled; a bag-of-words model, which predicts
frequent words whatever surrounds them, loses almost nothing. The end-of-training summary prints
this check (pretrain/report.py) and `bench/word_order_probe.py` adds a position-averaging probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Below this rise in held-out MLM loss (nats) when the context is shuffled, the model is reported
# as not (yet) using word order. Measured on the demo corpus: plateau models rise by < 0.1, models
# past it by > 0.5 (docs/RESULTS.md, "Learning quality").
USES_WORD_ORDER_NATS = 0.25


@dataclass(frozen=True)
class WordOrderCheck:
    pairs: int
    mlm_loss: float
    mlm_loss_shuffled: float
    mlm_acc: float
    mlm_acc_shuffled: float

    @property
    def loss_rise(self) -> float:
        return self.mlm_loss_shuffled - self.mlm_loss

    @property
    def uses_word_order(self) -> bool:
        return self.loss_rise >= USES_WORD_ORDER_NATS

    def as_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "mlm_loss": self.mlm_loss,
            "mlm_loss_context_shuffled": self.mlm_loss_shuffled,
            "mlm_acc": self.mlm_acc,
            "mlm_acc_context_shuffled": self.mlm_acc_shuffled,
            "uses_word_order": self.uses_word_order,
        }

    @classmethod
    def from_dict(cls, d: dict) -> WordOrderCheck:
        return cls(
            d["pairs"],
            d["mlm_loss"],
            d["mlm_loss_context_shuffled"],
            d["mlm_acc"],
            d["mlm_acc_context_shuffled"],
        )

    def line(self) -> str:
        verdict = (
            "the model uses word order"
            if self.uses_word_order
            else "little rise: the model is still close to a bag of words"
        )
        return (
            f"  word order             held-out MLM loss {self.mlm_loss:.3f} as is, "
            f"{self.mlm_loss_shuffled:.3f} with each pair's context shuffled "
            f"(+{self.loss_rise:.2f}: {verdict})"
        )


def shuffle_context(batch: dict, special_ids: Sequence[int], seed: int) -> torch.Tensor:
    """Input ids (B, T) with each row's unmasked, non-special real tokens permuted among
    themselves; masked positions, specials and padding stay where they are."""
    ids = batch["input_ids"].clone()  # (B, T)
    generator = torch.Generator().manual_seed(seed)
    ordinary = ~torch.isin(ids, torch.tensor(list(special_ids)))
    movable = (batch["labels"] == -100) & (batch["attention_mask"] == 1) & ordinary  # (B, T)
    for row in range(ids.size(0)):
        where = movable[row].nonzero().flatten()
        ids[row, where] = ids[row, where[torch.randperm(len(where), generator=generator)]]
    return ids


@torch.no_grad()
def masked_lm_score(model: nn.Module, batch: dict, input_ids: torch.Tensor) -> tuple[float, float]:
    """(MLM loss, MLM accuracy) of a `BertForPreTraining` at the batch's masked positions."""
    device = next(model.parameters()).device
    out = model(
        input_ids.to(device),
        batch["token_type_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["labels"].to(device),
    )
    labels = batch["labels"].to(device)
    logits = out.mlm_logits.float()
    if logits.dim() == 3:  # dense head: (B, T, V) -> the masked rows (M, V)
        logits = logits[labels != -100]
    labels = labels[labels != -100]  # (M,)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(-1) == labels).float().mean().item()


def word_order_check(
    model: nn.Module,
    dataset,
    collator,
    special_ids: Sequence[int],
    pairs: int = 512,
    seed: int = 0,
) -> WordOrderCheck:
    """Score the first `pairs` rows of `dataset` (a `PairDataset`, masked by `collator` as a data
    loader would) as is and with their context shuffled.

    Every process of a distributed run must call it alike: under ZeRO-3 the forward gathers each
    layer's weights from all ranks."""
    n = min(pairs, len(dataset))
    batch = collator(dataset.__getitems__([(0, i) for i in range(n)]))
    was_training = model.training
    model.eval()
    try:
        loss, acc = masked_lm_score(model, batch, batch["input_ids"])
        shuffled_ids = shuffle_context(batch, special_ids, seed)
        loss_shuffled, acc_shuffled = masked_lm_score(model, batch, shuffled_ids)
    finally:
        model.train(was_training)
    return WordOrderCheck(n, loss, loss_shuffled, acc, acc_shuffled)
