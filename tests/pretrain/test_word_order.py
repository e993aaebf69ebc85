"""The word-order check of the end-of-training summary (pretrain/word_order.py)."""

from __future__ import annotations

import torch

from pretrain.masking import MaskingCollator, MaskingConfig
from pretrain.model import BertForPreTraining
from pretrain.word_order import WordOrderCheck, shuffle_context, word_order_check
from tests.tiny_bert import V, tiny

SPECIALS = [0, 1, 2, 3]  # [PAD], [CLS], [SEP], [MASK]


class Rows:
    """What the check reads of a `PairDataset`: `len` and `__getitems__` by (epoch, index)."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            a, b = torch.randint(5, V, (7,), generator=g), torch.randint(5, V, (6,), generator=g)
            ids = [1, *a.tolist(), 2, *b.tolist(), 2]
            self.rows.append({"input_ids": ids, "token_type_ids": [0] * 9 + [1] * 7,
                              "next_sentence_label": 0})  # fmt: skip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys):
        return [{**self.rows[i], "epoch": e, "index": i} for e, i in keys]


def collator() -> MaskingCollator:
    return MaskingCollator(MaskingConfig(mlm_probability=0.3), vocab_size=V, pad_id=0, mask_id=3,
                           special_ids=SPECIALS, seed=5)  # fmt: skip


def test_shuffling_permutes_only_the_unmasked_ordinary_tokens_of_each_row():
    batch = collator()(Rows(6).__getitems__([(0, i) for i in range(6)]))
    shuffled = shuffle_context(batch, SPECIALS, seed=1)
    fixed = (batch["labels"] != -100) | torch.isin(batch["input_ids"], torch.tensor(SPECIALS))
    assert torch.equal(shuffled[fixed], batch["input_ids"][fixed])
    for row in range(6):
        assert sorted(shuffled[row].tolist()) == sorted(batch["input_ids"][row].tolist())
    assert not torch.equal(shuffled, batch["input_ids"])


def test_a_model_blind_to_positions_is_reported_as_a_bag_of_words():
    # Without position and segment embeddings, self-attention is permutation-equivariant: the
    # prediction at a masked position depends on the multiset of the other tokens only.
    torch.manual_seed(0)
    model = BertForPreTraining(tiny(hidden_dropout=0.0, attention_dropout=0.0))
    with torch.no_grad():
        model.bert.embeddings.position.weight.zero_()
        model.bert.embeddings.token_type.weight.zero_()
    check = word_order_check(model, Rows(8), collator(), SPECIALS, pairs=8)
    assert check.pairs == 8
    assert abs(check.loss_rise) < 1e-4 and not check.uses_word_order
    assert "still close to a bag of words" in check.line()
    assert model.training  # the model's mode is restored


def test_the_check_round_trips_through_the_summary_and_reads_its_verdict():
    check = WordOrderCheck(512, mlm_loss=4.0, mlm_loss_shuffled=5.5, mlm_acc=0.3,
                           mlm_acc_shuffled=0.15)  # fmt: skip
    assert check.uses_word_order and WordOrderCheck.from_dict(check.as_dict()) == check
    assert (
        "4.000 as is, 5.500 with each pair's context shuffled (+1.50: the model uses word order)"
        in check.line()
    )
