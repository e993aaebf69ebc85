"""Tests of the dynamic-masking collator (pretrain/masking.py).

The statistical tests use fixed seeds, so they are deterministic; their tolerances are four to five
binomial standard deviations or more, so that a correct implementation passes for (almost) any seed while a
wrong rate (e.g. 12% instead of 15%, or 70/20/10) fails.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from itertools import chain

import numpy as np
import pytest
import torch

from pretrain.masking import (
    IGNORE_INDEX,
    MaskingCollator,
    MaskingConfig,
    _philox4x32,
    continuation_ids_from_vocab,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, CLS, SEP, MASK)
VOCAB_SIZE = 1000
WORD_IDS = np.arange(5, 600)  # tokens that start a word
CONTINUATION_IDS = np.arange(600, VOCAB_SIZE)  # "##..." tokens
CONTINUATION_SET = set(CONTINUATION_IDS.tolist())
WIDTH = 128  # statistical tests pad every batch to this width, so batches stack


def make_collator(
    cfg: MaskingConfig | None = None,
    *,
    seed: int = 1234,
    vocab_size: int = VOCAB_SIZE,
    continuation_ids: np.ndarray | None = CONTINUATION_IDS,
) -> MaskingCollator:
    return MaskingCollator(
        cfg or MaskingConfig(),
        vocab_size=vocab_size,
        pad_id=PAD,
        mask_id=MASK,
        special_ids=SPECIAL,
        seed=seed,
        continuation_ids=continuation_ids,
    )


def feature(a, b, *, index: int, epoch: int = 0, nsp: int = 0) -> dict:
    """An NSP pair `[CLS] a [SEP] b [SEP]` as the data module hands it to the collator."""
    ids = [CLS, *a, SEP, *b, SEP]
    return {
        "input_ids": ids,
        "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
        "next_sentence_label": nsp,
        "epoch": epoch,
        "index": index,
    }


def random_features(n: int, *, rng: np.random.Generator, epoch: int = 0) -> list[dict]:
    """`n` pairs of random word tokens, 10 to WIDTH tokens long in all."""
    out = []
    for index in range(n):
        length = int(rng.integers(7, WIDTH - 3, endpoint=True))
        tokens = rng.choice(WORD_IDS, size=length).tolist()
        cut = int(rng.integers(1, length))
        out.append(feature(tokens[:cut], tokens[cut:], index=index, epoch=epoch))
    return out


def random_words(n_tokens: int, rng: np.random.Generator) -> list[list[int]]:
    """Words of 1 to 3 tokens (a word token, then `##` tokens) adding up to n_tokens."""
    tokens = rng.choice(CONTINUATION_IDS, n_tokens)
    lengths = rng.integers(1, 3, endpoint=True, size=n_tokens)
    starts = np.cumsum(lengths) - lengths
    starts = starts[starts < n_tokens]  # the last word may come out shorter
    tokens[starts] = rng.choice(WORD_IDS, starts.size)
    return [word.tolist() for word in np.split(tokens, starts[1:])]


def wwm_features(n: int, rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    """Pairs made of 1-3 token words, and for each position, (n, WIDTH), the first position of
    its word (its own position outside words)."""
    features, first = [], np.tile(np.arange(WIDTH), (n, 1))
    for index in range(n):
        a = random_words(int(rng.integers(5, 60)), rng)
        b = random_words(int(rng.integers(5, 60)), rng)
        features.append(feature([*chain(*a)], [*chain(*b)], index=index))
        position = 1  # after [CLS]
        for segment in (a, b):
            for word in segment:
                first[index, position : position + len(word)] = position
                position += len(word)
            position += 1  # [SEP]
    return features, first


def collate_all(collator: MaskingCollator, features: list[dict], batch_size: int = 512) -> dict:
    """Collate in batches and stack them: (N, WIDTH) arrays (the config pads to WIDTH)."""
    batches = [collator(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def original_ids(features: list[dict]) -> np.ndarray:
    out = np.full((len(features), WIDTH), PAD)
    for i, f in enumerate(features):
        out[i, : len(f["input_ids"])] = f["input_ids"]
    return out


def maskable(ids: np.ndarray) -> np.ndarray:
    return ~np.isin(ids, SPECIAL)


def expected_count(n_maskable: np.ndarray, p: float = 0.15, cap: float = np.inf) -> np.ndarray:
    return np.minimum(cap, np.maximum(1, np.rint(n_maskable * p)))


# --- batch layout ------------------------------------------------------------------------------


def test_batch_layout_padding_and_pass_through():
    features = [
        feature([10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25], index=0, nsp=1),  # length 14
        feature([10, 11], [20, 21], index=1, nsp=0),  # length 7
    ]
    batch = make_collator()(features)

    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
        "next_sentence_label",
    }
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        assert batch[key].shape == (2, 16), key  # 14 rounded up to a multiple of 8
        assert batch[key].dtype == torch.long, key
    assert batch["next_sentence_label"].dtype == torch.long
    assert batch["next_sentence_label"].tolist() == [1, 0]

    lengths = [14, 7]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (f, n) in enumerate(zip(features, lengths, strict=True)):
        assert batch["attention_mask"][row, :n].eq(1).all()
        assert batch["token_type_ids"][row, :n].tolist() == f["token_type_ids"]
        # Padding: pad id, segment 0, never a label.
        assert batch["input_ids"][row, n:].eq(PAD).all()
        assert batch["token_type_ids"][row, n:].eq(0).all()
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()


@pytest.mark.parametrize(("multiple", "width"), [(1, 13), (8, 16), (64, 64)])
def test_width_is_longest_rounded_up(multiple: int, width: int):
    collator = make_collator(MaskingConfig(pad_to_multiple_of=multiple))
    batch = collator([feature([10] * 5, [11] * 5, index=0), feature([10], [11], index=1)])
    assert batch["input_ids"].shape == (2, width)


def test_lists_arrays_and_tensors_give_the_same_batch():
    features = random_features(8, rng=np.random.default_rng(0))
    as_numpy = [
        {
            **f,
            "input_ids": np.array(f["input_ids"], np.int32),
            "token_type_ids": np.array(f["token_type_ids"], np.int8),
        }
        for f in features
    ]
    as_torch = [
        {
            **f,
            "input_ids": torch.tensor(f["input_ids"]),
            "token_type_ids": torch.tensor(f["token_type_ids"]),
        }
        for f in features
    ]
    collator = make_collator()
    expected = collator(features)
    for variant in (as_numpy, as_torch):
        batch = collator(variant)
        for key, value in expected.items():
            assert torch.equal(batch[key], value), key


# --- how many positions, and which --------------------------------------------------------------


def test_count_is_googles_exact_count_and_about_15_percent():
    features = random_features(2000, rng=np.random.default_rng(1))
    cfg = MaskingConfig(pad_to_multiple_of=WIDTH)
    batch = collate_all(make_collator(cfg), features)
    original = original_ids(features)

    n_maskable = maskable(original).sum(1)
    n_chosen = (batch["labels"] != IGNORE_INDEX).sum(1)
    # Exact per sequence: max(1, round(n * 0.15)), not a coin flip per token.
    np.testing.assert_array_equal(n_chosen, expected_count(n_maskable))
    # Overall, only rounding separates the rate from 15%: at most 0.5 token per sequence of
    # 4..125 maskable tokens, which averages out to well under 1 percentage point.
    assert abs(n_chosen.sum() / n_maskable.sum() - 0.15) < 0.01


def test_every_maskable_position_is_equally_likely():
    # One sequence of 100 maskable tokens, masked under 4000 different indices: each position is
    # chosen with probability exactly 15/100. Binomial std per position: sqrt(.15 * .85 / 4000)
    # = 0.0056; 5 std = 0.028 (over 100 positions a 5-std excursion has probability ~6e-5).
    tokens = np.random.default_rng(2).choice(WORD_IDS, 100).tolist()
    features = [feature(tokens[:50], tokens[50:], index=i) for i in range(4000)]
    batch = collate_all(make_collator(MaskingConfig(pad_to_multiple_of=WIDTH)), features)
    chosen = batch["labels"] != IGNORE_INDEX
    positions = maskable(original_ids(features)[0])
    frequency = chosen[:, positions].mean(0)
    assert np.abs(frequency - 0.15).max() < 0.028
    assert not chosen[:, ~positions].any()


def test_80_10_10_split():
    features = random_features(3000, rng=np.random.default_rng(3))
    batch = collate_all(make_collator(MaskingConfig(pad_to_multiple_of=WIDTH)), features)
    original = original_ids(features)
    chosen = batch["labels"] != IGNORE_INDEX
    n = chosen.sum()  # ~29 000 chosen positions
    masked = (batch["input_ids"] == MASK) & chosen
    kept = (batch["input_ids"] == original) & chosen
    replaced = chosen & ~masked & ~kept
    # A random replacement equal to the original looks kept: 1 in 995 replacement ids.
    p_same = 1 / (VOCAB_SIZE - len(SPECIAL))
    # Binomial std with n ~ 29 000: 0.0023 for 80%, 0.0018 for 10%; tolerance 0.01 is > 4 std.
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(replaced.sum() / n - 0.1 * (1 - p_same)) < 0.01
    assert abs(kept.sum() / n - (0.1 + 0.1 * p_same)) < 0.01


def test_random_replacements_are_uniform_over_non_special_tokens():
    # A small vocabulary so each replacement id gets many draws, and every chosen position is
    # replaced. [UNK] (1) is not in special_ids, so with ids 5..24 it makes 21 replacement ids.
    vocab_size = 25
    rng = np.random.default_rng(4)
    features = [
        feature(
            rng.integers(5, vocab_size, 60).tolist(),
            rng.integers(5, vocab_size, 60).tolist(),
            index=i,
        )
        for i in range(1000)
    ]
    cfg = MaskingConfig(mask_token_prob=0.0, random_token_prob=1.0, pad_to_multiple_of=WIDTH)
    batch = collate_all(make_collator(cfg, vocab_size=vocab_size, continuation_ids=None), features)
    draws = batch["input_ids"][batch["labels"] != IGNORE_INDEX]  # 18 000 draws
    counts = np.bincount(draws, minlength=vocab_size)
    assert counts[list(SPECIAL)].sum() == 0
    observed = counts[[UNK, *range(5, vocab_size)]]
    assert observed.sum() == draws.size
    # Chi-square against uniform, 20 degrees of freedom: 52.4 is its 1e-4 upper quantile.
    expected = draws.size / observed.size
    assert ((observed - expected) ** 2 / expected).sum() < 52.4


def test_special_tokens_and_padding_are_never_chosen():
    rng = np.random.default_rng(5)
    features = []
    for index in range(500):
        # Sprinkle [MASK], [PAD] and [UNK] into the text: only [UNK] is maskable.
        a = rng.choice([*WORD_IDS[:20], MASK, PAD, UNK], 30).tolist()
        b = rng.choice([*WORD_IDS[:20], MASK, PAD, UNK], int(rng.integers(1, 60))).tolist()
        features.append(feature(a, b, index=index))
    batch = collate_all(make_collator(MaskingConfig(pad_to_multiple_of=WIDTH)), features)
    original = original_ids(features)
    real = batch["attention_mask"] == 1
    never = ~maskable(original) | ~real
    assert (batch["labels"][never] == IGNORE_INDEX).all()
    assert (batch["input_ids"][never] == original[never]).all()
    assert (batch["labels"][original == UNK] != IGNORE_INDEX).any()
    # Labels hold the original token wherever a position is chosen; elsewhere input is unchanged.
    chosen = batch["labels"] != IGNORE_INDEX
    np.testing.assert_array_equal(batch["labels"][chosen], original[chosen])
    np.testing.assert_array_equal(batch["input_ids"][~chosen], original[~chosen])


def test_single_maskable_token_is_always_chosen():
    features = [feature([77], [], index=i) for i in range(50)]  # [CLS] 77 [SEP] [SEP]
    batch = make_collator()(features)
    assert (batch["labels"][:, 1] == 77).all()
    assert (batch["labels"] != IGNORE_INDEX).sum() == 50


def test_sequence_without_maskable_tokens_gets_no_label():
    batch = make_collator()([feature([], [], index=0), feature([MASK], [PAD], index=1)])
    assert (batch["labels"] == IGNORE_INDEX).all()


def test_max_predictions_per_seq_caps_the_count():
    features = random_features(300, rng=np.random.default_rng(6))
    cfg = MaskingConfig(max_predictions_per_seq=5, pad_to_multiple_of=WIDTH)
    batch = collate_all(make_collator(cfg), features)
    n_chosen = (batch["labels"] != IGNORE_INDEX).sum(1)
    n_maskable = maskable(original_ids(features)).sum(1)
    np.testing.assert_array_equal(n_chosen, expected_count(n_maskable, cap=5))
    assert n_chosen.max() == 5


# --- reproducibility ----------------------------------------------------------------------------


def rows_by_index(batch: dict, features: list[dict]) -> dict[int, tuple]:
    """Each sample's (input_ids, labels), trimmed to its length, keyed by its index."""
    return {
        f["index"]: (
            batch["input_ids"][row, : len(f["input_ids"])].tolist(),
            batch["labels"][row, : len(f["input_ids"])].tolist(),
        )
        for row, f in enumerate(features)
    }


@pytest.mark.parametrize("whole_word_masking", [False, True])
def test_mask_depends_only_on_seed_epoch_and_index(whole_word_masking: bool):
    features, _ = wwm_features(48, np.random.default_rng(7))
    cfg = MaskingConfig(whole_word_masking=whole_word_masking)
    collator = make_collator(cfg)
    reference = rows_by_index(collator(features), features)

    # Other batch sizes, compositions and orders (so other padded widths too): same masks.
    shuffled = [features[i] for i in np.random.default_rng(8).permutation(48)]
    for size in (1, 5, 16):
        for start in range(0, 48, size):
            part = shuffled[start : start + size]
            assert rows_by_index(collator(part), part) == {
                f["index"]: reference[f["index"]] for f in part
            }

    # A fresh collator (a resumed run, or another worker) and a pickled copy: same masks.
    for other in (
        make_collator(cfg),
        pickle.loads(pickle.dumps(collator)),
    ):
        assert rows_by_index(other(features), features) == reference


def test_other_epoch_or_seed_gives_other_masks():
    features = random_features(200, rng=np.random.default_rng(9))
    cfg = MaskingConfig(pad_to_multiple_of=WIDTH)
    labels = make_collator(cfg, seed=1)(features)["labels"] != IGNORE_INDEX
    next_epoch = [{**f, "epoch": 1} for f in features]
    for other in (make_collator(cfg, seed=1)(next_epoch), make_collator(cfg, seed=2)(features)):
        other_labels = other["labels"] != IGNORE_INDEX
        # Independent masks agree on a chosen position ~15% of the time; identical ones always.
        overlap = (labels & other_labels).sum() / labels.sum()
        assert overlap < 0.3
    # Large seeds, epochs and indices are valid and distinct.
    big = [{**f, "epoch": 2**32 - 1, "index": 2**63 + f["index"]} for f in features[:4]]
    assert not torch.equal(
        make_collator(cfg, seed=2**64 - 1)(big)["labels"],
        make_collator(cfg, seed=2**63)(big)["labels"],
    )


def test_philox_matches_random123_known_answers():
    # Random123's kat_vectors for philox4x32-10: (counter, key) -> output.
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        out = _philox4x32(tuple(np.array([c], np.uint64) for c in counter), key)
        assert tuple(int(word[0]) for word in out) == expected


# --- whole-word masking ---------------------------------------------------------------------------


def test_whole_word_masking_never_splits_a_word_and_chooses_about_15_percent():
    features, first = wwm_features(600, np.random.default_rng(10))
    cfg = MaskingConfig(whole_word_masking=True, pad_to_multiple_of=WIDTH)
    batch = collate_all(make_collator(cfg), features)
    chosen = batch["labels"] != IGNORE_INDEX
    # Every position is chosen exactly when the first position of its word is.
    np.testing.assert_array_equal(chosen, np.take_along_axis(chosen, first, axis=1))

    is_maskable = maskable(original_ids(features))
    n_maskable, n_chosen = is_maskable.sum(1), chosen.sum(1)
    target = expected_count(n_maskable)
    # Google's walk never exceeds the count, and with single-token words around it almost always
    # meets it exactly (here it falls short by under 1%): allow a 5% shortfall overall.
    assert (n_chosen <= target).all()
    assert n_chosen.sum() > 0.95 * target.sum()
    assert abs(n_chosen.sum() / n_maskable.sum() - 0.15) < 0.01

    # Words of every length get chosen. Not at the same rate: the walk skips a word longer than
    # the room left, so short words fill the last slots (~20% of 1-token words, ~13% of 3-token
    # words here). The bounds only rule out starving long words or favouring them.
    word_length = np.zeros_like(first)  # at the first position of each word
    rows, columns = np.nonzero(is_maskable)
    np.add.at(word_length, (rows, first[rows, columns]), 1)
    starts = is_maskable & (first == np.arange(WIDTH))
    rates = [chosen[starts & (word_length == n)].mean() for n in (1, 2, 3)]
    assert all(0.1 < rate < 0.25 for rate in rates), rates
    assert rates[0] > rates[2]


def googles_choice(feature: dict, cfg: MaskingConfig, seed: int) -> set[int]:
    """Positions Google's per-sequence loop chooses, visiting words in the collator's order (by
    the first Philox word of each word's first position, ties by position)."""
    n = len(feature["input_ids"])
    counter = [
        np.arange(n, dtype=np.uint64),
        feature["epoch"],
        feature["index"] % 2**32,
        feature["index"] >> 32,
    ]
    order_word = _philox4x32(
        tuple(np.asarray(c, np.uint64) for c in counter), (seed % 2**32, seed >> 32)
    )[0]
    words: list[list[int]] = []
    for i, token in enumerate(feature["input_ids"]):
        if token in SPECIAL:
            continue
        if (
            cfg.whole_word_masking
            and token in CONTINUATION_SET
            and words
            and words[-1][-1] == i - 1
        ):
            words[-1].append(i)
        else:
            words.append([i])
    n_maskable = sum(map(len, words))
    count = min(cfg.max_predictions_per_seq or n, max(1, round(n_maskable * cfg.mlm_probability)))
    chosen: set[int] = set()
    for word in sorted(words, key=lambda word: (order_word[word[0]], word[0])):
        if len(chosen) >= count:
            break
        if len(chosen) + len(word) > count:
            continue
        chosen.update(word)
    return chosen


@pytest.mark.parametrize(
    "cfg",
    [
        MaskingConfig(),
        MaskingConfig(whole_word_masking=True),
        MaskingConfig(whole_word_masking=True, mlm_probability=0.4, max_predictions_per_seq=20),
    ],
)
def test_batched_choice_matches_googles_loop(cfg: MaskingConfig):
    features, _ = wwm_features(200, np.random.default_rng(11))
    features = [{**f, "epoch": 3, "index": 2**40 + f["index"]} for f in features]
    labels = make_collator(cfg, seed=99)(features)["labels"].numpy()
    for row, f in enumerate(features):
        assert set(np.flatnonzero(labels[row] != IGNORE_INDEX)) == googles_choice(f, cfg, 99)


def test_whole_word_masking_skips_words_that_do_not_fit():
    # Words of 3, 3, 1, 1 and 3 tokens; 11 * 0.2 rounds to 2, so Google's walk skips every
    # 3-token word and always ends with exactly the two single-token words.
    w, c = int(WORD_IDS[0]), int(CONTINUATION_IDS[0])
    a = [w, c, c, w, c, c, w + 1, w + 2]
    b = [w, c, c]
    features = [feature(a, b, index=i) for i in range(200)]
    cfg = MaskingConfig(mlm_probability=0.2, whole_word_masking=True)
    chosen = make_collator(cfg)(features)["labels"] != IGNORE_INDEX
    single_positions = [7, 8]  # [CLS] w c c w c c (w+1) (w+2) ...
    assert chosen[:, single_positions].all()
    assert chosen.sum() == 2 * 200


def test_continuation_token_after_a_special_token_starts_its_own_word():
    # [CLS] w ##c [SEP] ##c [SEP]: the second ##c is not part of w's word.
    w, c = int(WORD_IDS[0]), int(CONTINUATION_IDS[0])
    features = [feature([w, c], [c], index=i) for i in range(200)]
    cfg = MaskingConfig(mlm_probability=0.5, whole_word_masking=True)  # count: round(1.5) = 2
    chosen = (make_collator(cfg)(features)["labels"] != IGNORE_INDEX).numpy()
    # The two words are {1, 2} and {4}; the count of 2 fits {1, 2} whole, or {4} alone.
    assert (chosen[:, 1] == chosen[:, 2]).all()
    assert chosen[:, 4].any() and not chosen[:, 4].all()
    assert not (chosen[:, 1] & chosen[:, 4]).any()


def test_continuation_ids_from_vocab(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "#", "##s", "a##"]
    assert continuation_ids_from_vocab(vocab) == [6, 8]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    assert continuation_ids_from_vocab(path) == [6, 8]
    assert continuation_ids_from_vocab(str(path)) == [6, 8]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mlm_probability", 0.0),
        ("mlm_probability", 1.5),
        ("mlm_probability", float("nan")),
        ("mlm_probability", "0.15"),
        ("mask_token_prob", -0.1),
        ("mask_token_prob", 1.1),
        ("random_token_prob", 2),
        ("whole_word_masking", "yes"),
        ("pad_to_multiple_of", 0),
        ("pad_to_multiple_of", 8.0),
        ("pad_to_multiple_of", True),
        ("max_predictions_per_seq", 0),
        ("max_predictions_per_seq", 2.5),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        replace(MaskingConfig(), **{field: value})


def test_probabilities_summing_over_one_are_rejected():
    with pytest.raises(ValueError, match=r"mask_token_prob \+ random_token_prob"):
        MaskingConfig(mask_token_prob=0.9, random_token_prob=0.2)


def test_whole_word_masking_needs_continuation_ids():
    with pytest.raises(ValueError, match="continuation_ids"):
        make_collator(MaskingConfig(whole_word_masking=True), continuation_ids=None)


def test_bad_collator_arguments_and_inputs_are_reported():
    with pytest.raises(ValueError, match="special_ids"):
        MaskingCollator(
            MaskingConfig(), vocab_size=10, pad_id=0, mask_id=4, special_ids=[12], seed=0
        )
    with pytest.raises(ValueError, match="seed"):
        make_collator(seed=-1)
    collator = make_collator()
    with pytest.raises(ValueError, match="vocab_size"):
        collator([feature([VOCAB_SIZE], [], index=0)])
    with pytest.raises(KeyError, match="epoch"):
        collator([{k: v for k, v in feature([10], [], index=0).items() if k != "epoch"}])
    with pytest.raises(ValueError, match="token_type_ids"):
        collator([{**feature([10], [11], index=0), "token_type_ids": [0]}])
