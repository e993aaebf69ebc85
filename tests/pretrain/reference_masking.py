"""The masking collator as it was before its batch-at-once rewrite, frozen: the oracle of
tests/pretrain/test_masking_parity.py (every tensor of every batch must stay identical).

Do not edit or import from pretrain/masking.py here: a change to the library must not move its
own reference. Below is pretrain/masking.py verbatim, docstring aside.

Original docstring:

Dynamic masked-LM masking: the collator that turns NSP pairs into training batches.

Google's `create_pretraining_data.py` chose the masked positions once, while writing the data
(`dupe_factor` copies with different masks). Here the prepared data holds unmasked pairs and the
masks are drawn when a batch is built, with Google's rules otherwise: an exact number of positions
per sequence, optional whole-word masking, and the 80/10/10 split of chosen positions into
[MASK] / random token / unchanged.

Every random number is a function of `(seed, epoch, index, position)` alone (Philox4x32-10, a
counter-based generator, evaluated for the whole batch at once), so a sample's mask does not depend
on the number of loader workers, on which samples share its batch or in what order, and it is the
same after a resume; each epoch masks every sample afresh.

Batches follow the "Batches" table of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100
"""Label of positions that are not predicted (the `ignore_index` of the MLM cross-entropy)."""


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class MaskingConfig:
    """How many positions to predict and how to corrupt them (Google's BERT recipe by default)."""

    mlm_probability: float = 0.15
    """Fraction of a sequence's maskable tokens chosen for prediction, in (0, 1]. The count is
    exact, `max(1, round(n_maskable * mlm_probability))` (rounding half to even, as Python 3's
    `round`), not a per-token coin flip; whole-word masking may choose fewer (see `_choose`)."""

    mask_token_prob: float = 0.8
    """Of the chosen positions, the fraction replaced with [MASK]."""

    random_token_prob: float = 0.1
    """Of the chosen positions, the fraction replaced with a token drawn uniformly from the
    non-special vocabulary; the remaining `1 - mask_token_prob - random_token_prob` keep their
    token (and are still predicted)."""

    whole_word_masking: bool = False
    """Choose whole words: a word is a token followed by its `##` continuation tokens."""

    pad_to_multiple_of: int = 8
    """The batch's sequence length is the longest sequence rounded up to this multiple."""

    max_predictions_per_seq: int | None = None
    """Cap on the chosen positions per sequence (Google's `max_predictions_per_seq`); None: no
    cap."""

    def __post_init__(self) -> None:
        if not (_is_real(self.mlm_probability) and 0.0 < self.mlm_probability <= 1.0):
            raise ValueError(f"mlm_probability must be in (0, 1], got {self.mlm_probability!r}")
        for name in ("mask_token_prob", "random_token_prob"):
            value = getattr(self, name)
            if not (_is_real(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError(
                "mask_token_prob + random_token_prob must be at most 1, got "
                f"{self.mask_token_prob!r} + {self.random_token_prob!r}"
            )
        if not isinstance(self.whole_word_masking, bool):
            raise ValueError(f"whole_word_masking must be a bool, got {self.whole_word_masking!r}")
        if not (_is_int(self.pad_to_multiple_of) and self.pad_to_multiple_of >= 1):
            raise ValueError(
                f"pad_to_multiple_of must be an integer >= 1, got {self.pad_to_multiple_of!r}"
            )
        cap = self.max_predictions_per_seq
        if cap is not None and not (_is_int(cap) and cap >= 1):
            raise ValueError(
                f"max_predictions_per_seq must be None or an integer >= 1, got {cap!r}"
            )


def continuation_ids_from_vocab(vocab: Sequence[str] | str | os.PathLike[str]) -> list[int]:
    """Ids of the WordPiece continuation tokens (those spelled `##...`), in increasing order.

    `vocab` is the list of tokens (position = id) or the path of a `vocab.txt` (one token per
    line, line number = id, read the way `transformers.BertTokenizer` reads it).
    """
    if isinstance(vocab, (str, os.PathLike)):
        with Path(vocab).open(encoding="utf-8") as f:
            tokens = f.read().split("\n")
        if tokens and tokens[-1] == "":  # the newline that ends the last line
            tokens.pop()
    else:
        tokens = list(vocab)
    return [i for i, token in enumerate(tokens) if token.startswith("##")]


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
# counter-based generator, i.e. a keyed bijection of a 128-bit counter, so the random words of
# any (sample, position) are computed directly, for the whole batch at once.
_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _philox4x32(
    counter: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], key: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 of `counter` (four broadcastable uint64 arrays of 32-bit values) under
    `key` (two 32-bit ints): four uint64 arrays of 32-bit random words, of the broadcast shape.

    Equals Random123's `philox4x32(ctr, key)`; 32x32-bit products are exact in uint64.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = c0 * _PHILOX_M0, c2 * _PHILOX_M1
        c0, c1, c2, c3 = (
            (p1 >> _32) ^ c1 ^ np.uint64(k0),
            p1 & _LOW32,
            (p0 >> _32) ^ c3 ^ np.uint64(k1),
            p0 & _LOW32,
        )
        k0, k1 = (k0 + _PHILOX_W0) & 0xFFFFFFFF, (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


class MaskingCollator:
    """Pads a list of NSP pairs into a batch and masks it (see the module docstring).

    Args:
        cfg: the masking recipe.
        vocab_size: size of the embedding table; every input id must be below it.
        pad_id: id written into padding positions of `input_ids`.
        mask_id: the [MASK] id.
        special_ids: ids that are never chosen for prediction and never drawn as random
            replacements. Pass [PAD], [CLS], [SEP] and [MASK]; `pad_id` and `mask_id` are added if
            missing. [UNK] is maskable unless listed, as in Google's code.
        seed: the run's seed; with a sample's `(epoch, index)` it fixes the sample's mask.
        continuation_ids: ids whose vocabulary entry starts with `##`
            (`continuation_ids_from_vocab`); required for whole-word masking.
    """

    def __init__(
        self,
        cfg: MaskingConfig,
        *,
        vocab_size: int,
        pad_id: int,
        mask_id: int,
        special_ids: Sequence[int],
        seed: int,
        continuation_ids: Sequence[int] | None = None,
    ) -> None:
        if not (_is_int(vocab_size) and 1 <= vocab_size < 2**32):
            raise ValueError(f"vocab_size must be an integer in [1, 2**32), got {vocab_size!r}")
        if not (_is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        special = [pad_id, mask_id, *special_ids]
        if not all(_is_int(i) and 0 <= i < vocab_size for i in special):
            raise ValueError(
                f"pad_id, mask_id and special_ids must be ids in [0, {vocab_size}), got "
                f"pad_id={pad_id!r}, mask_id={mask_id!r}, special_ids={list(special_ids)!r}"
            )
        if cfg.whole_word_masking and continuation_ids is None:
            raise ValueError(
                "continuation_ids is required when whole_word_masking is on: pass "
                "continuation_ids_from_vocab(<tokenizer dir>/vocab.txt)"
            )

        self.cfg = cfg
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.seed = int(seed)
        self._philox_key = (self.seed & 0xFFFFFFFF, self.seed >> 32)
        # Lookup tables indexed by token id, shape (vocab_size,).
        self._is_special = np.zeros(vocab_size, dtype=bool)
        self._is_special[special] = True
        self._is_continuation = np.zeros(vocab_size, dtype=bool)
        if continuation_ids is not None:
            continuation = np.asarray(continuation_ids, dtype=np.int64)
            if continuation.size and (continuation.min() < 0 or continuation.max() >= vocab_size):
                raise ValueError(f"continuation_ids must be ids in [0, {vocab_size})")
            self._is_continuation[continuation] = True
        # Random replacements are drawn uniformly from this, shape (n_replacement,).
        self._replacement_ids = np.flatnonzero(~self._is_special)
        if cfg.random_token_prob > 0 and self._replacement_ids.size == 0:
            raise ValueError(
                "random_token_prob > 0 needs at least one non-special token in the vocabulary"
            )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad and mask `features` into a batch.

        Each feature has `input_ids` (`[CLS] A [SEP] B [SEP]`, unpadded; a list, array or 1-D
        tensor), `token_type_ids` (same length), `next_sentence_label`, and the sampler's `epoch`
        and `index`. The batch has `input_ids` (masked), `token_type_ids`, `attention_mask` and
        `labels` (original id at chosen positions, -100 elsewhere), all (B, T) long with T the
        longest length rounded up to `pad_to_multiple_of`, and `next_sentence_label` (B,) long.
        """
        if not features:
            raise ValueError("MaskingCollator got an empty list of features")
        lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)  # (B,)
        multiple = self.cfg.pad_to_multiple_of
        batch, width = len(features), -(-int(lengths.max()) // multiple) * multiple

        input_ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((batch, width), dtype=np.int64)
        keys = np.zeros((2, batch), dtype=np.uint64)  # (epoch, index) of each sample
        for i, (f, n) in enumerate(zip(features, lengths, strict=True)):
            if len(f["token_type_ids"]) != n:
                raise ValueError(
                    f"feature {i}: token_type_ids has {len(f['token_type_ids'])} entries, "
                    f"input_ids {n}"
                )
            input_ids[i, :n] = f["input_ids"]
            token_type_ids[i, :n] = f["token_type_ids"]
            try:
                epoch, index = int(f["epoch"]), int(f["index"])
            except KeyError as err:
                raise KeyError(
                    f"feature {i} has no {err}: MaskingCollator needs the sampler's epoch and "
                    "index in every feature"
                ) from None
            if not (0 <= epoch < 2**32 and 0 <= index < 2**64):
                raise ValueError(f"feature {i}: epoch {epoch} or index {index} out of range")
            keys[:, i] = epoch, index
        if input_ids.min() < 0 or input_ids.max() >= self.vocab_size:
            raise ValueError(
                f"input ids must be in [0, {self.vocab_size}) (vocab_size), got ids from "
                f"{input_ids.min()} to {input_ids.max()}: is the data from another tokenizer?"
            )

        # Four random 32-bit words per position, each (B, T), from the counter
        # (position, epoch, index low, index high) under the key (seed low, seed high): they
        # depend on nothing else, so not on the padded width, the batch or the worker.
        epoch, index = keys[:, :, None]  # (B, 1) each
        position = np.arange(width, dtype=np.uint64)[None, :]  # (1, T)
        order_word, action_word, token_word, _ = _philox4x32(
            (position, epoch, index & _LOW32, index >> _32), self._philox_key
        )

        real = np.arange(width) < lengths[:, None]  # (B, T)
        chosen = self._choose(input_ids, real, order_word)  # (B, T)
        labels = np.where(chosen, input_ids, IGNORE_INDEX)

        # 80/10/10, decided per chosen position by a uniform in [0, 1).
        action = action_word * 2.0**-32  # (B, T)
        p_mask = self.cfg.mask_token_prob
        to_mask = chosen & (action < p_mask)
        to_random = chosen & (action >= p_mask) & (action < p_mask + self.cfg.random_token_prob)
        input_ids[to_mask] = self.mask_id
        # floor(word * n / 2**32): uniform over the n replacement ids up to a bias below n / 2**32.
        n_replacement = np.uint64(self._replacement_ids.size)
        input_ids[to_random] = self._replacement_ids[(token_word[to_random] * n_replacement) >> _32]

        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "next_sentence_label": torch.tensor(
                [int(f["next_sentence_label"]) for f in features], dtype=torch.long
            ),
        }

    def _choose(
        self, input_ids: np.ndarray, real: np.ndarray, order_word: np.ndarray
    ) -> np.ndarray:
        """Positions to predict, (B, T) bool, from the ids, the real-token mask and one random
        32-bit word per position, all (B, T).

        Google's procedure, per sequence: group the candidate positions into words (one position
        per word without whole-word masking), visit the words in random order, take each word
        that still fits in the count, stop when the count is reached. It runs for the whole batch
        at once: the order is an argsort of a random key per word, the greedy walk a cumulative
        sum plus a short loop over the words left after the first one that did not fit.
        """
        candidate = real & ~self._is_special[input_ids]  # (B, T)
        n_candidates = candidate.sum(axis=1)  # (B,)
        count = np.maximum(1, np.rint(n_candidates * self.cfg.mlm_probability)).astype(np.int64)
        if self.cfg.max_predictions_per_seq is not None:
            count = np.minimum(count, self.cfg.max_predictions_per_seq)

        if self.cfg.whole_word_masking:
            # A `##` token continues the word of the candidate just before it; after a special
            # token (or at the start) it starts a word of its own, so no word spans [SEP].
            follows_candidate = np.zeros_like(candidate)
            follows_candidate[:, 1:] = candidate[:, :-1]
            continues = self._is_continuation[input_ids] & follows_candidate
            starts = candidate & ~continues  # (B, T): first position of each word
        else:
            starts = candidate

        # Words numbered in row-major order of their first position; every candidate belongs to
        # the last word started at or before it, which lies in the same row.
        word_of = (np.cumsum(starts, axis=None) - 1).reshape(starts.shape)  # (B, T)
        n_words = starts.sum(axis=1)  # (B,)
        word_length = np.zeros(starts.shape, dtype=np.int64)  # (B, T): at first positions
        word_length[starts] = np.bincount(word_of[candidate], minlength=int(n_words.sum()))

        # Visit order: words sorted by the random word at their first position; the rest get
        # 2**32, above any 32-bit word, and sort last. A stable sort breaks the rare ties by
        # position, so the order does not depend on the padded width.
        sort_key = np.where(starts, order_word, np.uint64(2**32))
        order = np.argsort(sort_key, axis=1, kind="stable")  # (B, T)
        visited_length = np.take_along_axis(word_length, order, axis=1)  # (B, T), 0 past the end

        # Until a word does not fit, the taken words are a prefix of the visit order.
        taken = (np.cumsum(visited_length, axis=1) <= count[:, None]) & (visited_length > 0)
        budget = count - (visited_length * taken).sum(axis=1)  # (B,)
        first_skipped = taken.sum(axis=1)  # (B,)
        rows = np.flatnonzero((budget > 0) & (first_skipped < n_words))
        # Only whole-word masking gets here (single-position words always fit); the loop walks
        # the words after the first skipped one, for the rows with room left.
        if rows.size:
            budget = budget[rows]
            for j in range(int(first_skipped[rows].min()), int(n_words[rows].max())):
                length = visited_length[rows, j]
                fits = (length > 0) & (length <= budget) & ~taken[rows, j]
                taken[rows, j] |= fits
                budget -= np.where(fits, length, 0)
                if not budget.any():
                    break

        word_taken = np.zeros_like(starts)  # (B, T): at first positions
        np.put_along_axis(word_taken, order, taken, axis=1)
        chosen = np.zeros_like(candidate)
        chosen[candidate] = word_taken[starts][word_of[candidate]]
        return chosen
