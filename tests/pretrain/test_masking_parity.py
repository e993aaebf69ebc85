"""The batch-at-once masking collator builds exactly the batches of its previous per-row form
(tests/pretrain/reference_masking.py, frozen): every tensor, for any seed, epoch, index, recipe
and mix of rows, whether the rows come as dicts of lists, of arrays, or packed as a `PairBatch`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pretrain.masking import (
    MaskingCollator,
    MaskingConfig,
    PairBatch,
    _first_visited,
    _visit_order,
)
from tests.pretrain import reference_masking as reference

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, CLS, SEP, MASK)
VOCAB_SIZE = 300
WORD_IDS = np.arange(5, 200)  # tokens that start a word
CONTINUATION_IDS = np.arange(200, VOCAB_SIZE)  # "##..." tokens


def random_segment(rng: np.random.Generator, n_tokens: int, max_word: int) -> list[int]:
    """Words of 1 to `max_word` tokens (a word token, then `##` tokens), with now and then an
    [UNK], a [MASK], a [PAD] or a stray `##` token, `n_tokens` in all."""
    out: list[int] = []
    while len(out) < n_tokens:
        out.append(int(rng.choice(WORD_IDS)))
        out.extend(rng.choice(CONTINUATION_IDS, int(rng.integers(0, max_word))).tolist())
        if rng.random() < 0.05:
            out.append(int(rng.choice([UNK, MASK, PAD, CONTINUATION_IDS[0]])))
    return out[:n_tokens]


def random_rows(rng: np.random.Generator, n: int, max_len: int, max_word: int = 3) -> list[dict]:
    """`n` NSP pairs of mixed lengths (3 to `max_len` tokens, some without a maskable token),
    with arbitrary epochs and indices, as row dicts of lists."""
    rows = []
    for _ in range(n):
        length = int(rng.integers(3, max_len, endpoint=True))
        text = random_segment(rng, length - 3, max_word)
        cut = int(rng.integers(0, len(text) + 1))
        a, b = text[:cut], text[cut:]
        rows.append(
            {
                "input_ids": [CLS, *a, SEP, *b, SEP],
                "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                "next_sentence_label": int(rng.integers(0, 2)),
                "epoch": int(rng.choice([0, 1, 7, 2**32 - 1])),
                "index": int(rng.integers(0, 2**63))
                if rng.random() < 0.3
                else int(rng.integers(0, 10**6)),
            }
        )
    return rows


def collators(cfg: dict, seed: int) -> tuple[MaskingCollator, reference.MaskingCollator]:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        pad_id=PAD,
        mask_id=MASK,
        special_ids=SPECIAL,
        seed=seed,
        continuation_ids=CONTINUATION_IDS.tolist(),
    )
    return (
        MaskingCollator(MaskingConfig(**cfg), **kwargs),
        reference.MaskingCollator(reference.MaskingConfig(**cfg), **kwargs),
    )


def assert_same_batch(batch: dict, expected: dict) -> None:
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype, key
        assert batch[key].shape == value.shape, key
        assert torch.equal(batch[key], value), key


CONFIGS = [
    {},
    {"whole_word_masking": True},
    {"mlm_probability": 0.4, "pad_to_multiple_of": 1},
    {"mlm_probability": 0.4, "whole_word_masking": True, "pad_to_multiple_of": 64},
    {"mlm_probability": 1.0, "whole_word_masking": True},
    {"mlm_probability": 0.05, "max_predictions_per_seq": 3},
    {"whole_word_masking": True, "max_predictions_per_seq": 20, "mlm_probability": 0.3},
    {"mask_token_prob": 0.0, "random_token_prob": 1.0},
    {"mask_token_prob": 0.5, "random_token_prob": 0.5, "whole_word_masking": True},
    {"mask_token_prob": 1.0, "random_token_prob": 0.0, "pad_to_multiple_of": 3},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("seed", [0, 1234, 2**40 + 7, 2**64 - 1])
def test_same_batches_as_the_reference(cfg: dict, seed: int):
    rng = np.random.default_rng([seed % 2**32, len(CONFIGS)])
    new, old = collators(cfg, seed)
    for size, max_len in [(1, 12), (7, 40), (32, 128), (16, 300)]:
        rows = random_rows(rng, size, max_len, max_word=int(rng.integers(2, 7)))
        expected = old(rows)
        assert_same_batch(new(rows), expected)
        as_arrays = [
            {
                **r,
                "input_ids": np.array(r["input_ids"], np.int32),
                "token_type_ids": np.array(r["token_type_ids"], np.int8),
            }
            for r in rows
        ]
        assert_same_batch(new(as_arrays), expected)
        assert_same_batch(new(PairBatch.from_features(rows)), expected)


def test_a_batch_is_one_storage():
    # A loader worker hands each storage over on its own (shared memory, a file descriptor): the
    # collator puts the whole batch in one.
    new, _ = collators({}, seed=3)
    batch = new(random_rows(np.random.default_rng(4), 9, 50))
    assert len({t.untyped_storage().data_ptr() for t in batch.values()}) == 1
    assert all(t.is_contiguous() for t in batch.values())


def test_same_batches_over_many_epochs_and_long_words():
    # Long words (up to 12 tokens) and a high rate make the walk past the first word that does not
    # fit long; 40 epochs of the same rows give 40 different masks, each as the reference's.
    rng = np.random.default_rng(5)
    rows = random_rows(rng, 24, 128, max_word=12)
    new, old = collators({"whole_word_masking": True, "mlm_probability": 0.35}, seed=99)
    for epoch in range(40):
        epoch_rows = [{**r, "epoch": epoch} for r in rows]
        assert_same_batch(new(epoch_rows), old(epoch_rows))


def test_pair_batch_is_a_sequence_of_its_rows():
    rows = random_rows(np.random.default_rng(6), 5, 30)
    packed = PairBatch.from_features(rows)
    assert len(packed) == 5
    for row, unpacked in itertools.zip_longest(rows, packed):
        assert unpacked["input_ids"].tolist() == row["input_ids"]
        assert unpacked["token_type_ids"].tolist() == row["token_type_ids"]
        for key in ("next_sentence_label", "epoch", "index"):
            assert unpacked[key] == row[key]
    assert packed[-1]["index"] == rows[-1]["index"]
    with pytest.raises(IndexError):
        packed[5]
    with pytest.raises(ValueError, match="lengths add up"):
        PairBatch(
            packed.input_ids[1:],
            packed.token_type_ids,
            packed.lengths,
            packed.next_sentence_label,
            packed.epoch,
            packed.index,
        )


@pytest.mark.parametrize("width", [1, 2, 7, 128, 513])
def test_visit_order_is_the_stable_argsort(width: int):
    # Random words from a tiny range, so ties are everywhere (with 32-bit words they are rare).
    rng = np.random.default_rng(width)
    starts = rng.random((6, width)) < 0.7
    order_word = rng.integers(0, 4, (6, width)).astype(np.uint64)
    order_word[0] = 2**32 - 1  # the largest word still comes before every non-start
    expected = np.argsort(np.where(starts, order_word, np.uint64(2**32)), axis=1, kind="stable")
    np.testing.assert_array_equal(_visit_order(starts, order_word), expected)


@pytest.mark.parametrize("width", [1, 5, 128, 512])
def test_first_visited_is_the_first_k_of_the_stable_argsort(width: int):
    rng = np.random.default_rng(width + 1)
    candidate = rng.random((8, width)) < 0.8
    candidate[0] = False  # a row without candidates
    order_word = rng.integers(0, 3, (8, width)).astype(np.uint64)  # ties everywhere
    order_word[1] = 2**32 - 1  # candidates at the largest word, tied with the others' fill
    n_candidates = candidate.sum(axis=1)
    k = np.minimum(n_candidates, rng.integers(1, width + 1, 8))
    order = np.argsort(np.where(candidate, order_word, np.uint64(2**32)), axis=1, kind="stable")
    expected = np.zeros_like(candidate)
    for row in range(8):
        expected[row, order[row, : k[row]]] = True
    np.testing.assert_array_equal(_first_visited(candidate, order_word, k), expected)
