"""Dynamic masked-LM masking: the collator that turns NSP pairs into training batches.

Google's `create_pretraining_data.py` chose the masked positions once, while writing the data
(`dupe_factor` copies with different masks). Here the prepared data holds unmasked pairs and the
masks are drawn when a batch is built, with Google's rules otherwise: an exact number of positions
per sequence, optional whole-word masking, and the 80/10/10 split of chosen positions into
[MASK] / random token / unchanged.

Every random number is a function of `(seed, epoch, index, position)` alone (Philox4x32-10, a
counter-based generator, evaluated for the whole batch at once), so a sample's mask does not depend
on the number of loader workers, on which samples share its batch or in what order, and it is the
same after a resume; each epoch masks every sample afresh.

A batch is built without a loop over its rows or tokens: the rows arrive end to end
(`PairBatch`, as `pretrain.data.PairDataset` reads them) and every step, from padding to the
80/10/10 split, is a NumPy operation over the whole padded (B, T) batch.

Batches follow the "Batches" table of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
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


@dataclass(frozen=True, eq=False)
class PairBatch:
    """The NSP pairs of one micro-batch, unpadded and end to end: what `pretrain.data.PairDataset`
    reads in one go and `MaskingCollator` pads and masks without a loop over the rows.

    Row i's tokens are `input_ids[offsets[i]:offsets[i + 1]]` with `offsets` the running sum of
    `lengths` from 0. The batch is also a read-only sequence of row dicts, the features
    `MaskingCollator` otherwise takes.
    """

    input_ids: np.ndarray
    """(N,) integer: the rows' `[CLS] A [SEP] B [SEP]` ids, one row after the other."""
    token_type_ids: np.ndarray
    """(N,) integer, aligned with `input_ids`."""
    lengths: np.ndarray
    """(B,) int64: tokens per row; N is their sum."""
    next_sentence_label: np.ndarray
    """(B,) integer."""
    epoch: np.ndarray
    """(B,) uint64: the sampler's epoch of each row (below 2**32)."""
    index: np.ndarray
    """(B,) uint64: the sampler's index of each row."""

    def __post_init__(self) -> None:
        batch = self.lengths.shape
        n_tokens = int(self.lengths.sum())
        if self.input_ids.shape != (n_tokens,) or self.token_type_ids.shape != (n_tokens,):
            raise ValueError(
                f"PairBatch: lengths add up to {n_tokens} tokens, but input_ids has shape "
                f"{self.input_ids.shape} and token_type_ids {self.token_type_ids.shape}"
            )
        for name in ("next_sentence_label", "epoch", "index"):
            if getattr(self, name).shape != batch:
                raise ValueError(f"PairBatch: {name} must have shape {batch} like lengths")
        if self.epoch.dtype != np.uint64 or self.index.dtype != np.uint64:
            raise ValueError("PairBatch: epoch and index must be uint64 arrays")

    @classmethod
    def from_features(cls, features: Sequence[dict[str, Any]]) -> PairBatch:
        """Pack row dicts (`input_ids` and `token_type_ids` as lists, arrays or 1-D tensors;
        `next_sentence_label`, `epoch`, `index`) into a batch, checking each row."""
        keys = np.zeros((len(features), 2), dtype=np.uint64)  # (B, 2): epoch, index
        for i, f in enumerate(features):
            if len(f["token_type_ids"]) != len(f["input_ids"]):
                raise ValueError(
                    f"feature {i}: token_type_ids has {len(f['token_type_ids'])} entries, "
                    f"input_ids {len(f['input_ids'])}"
                )
            try:
                epoch, index = int(f["epoch"]), int(f["index"])
            except KeyError as err:
                raise KeyError(
                    f"feature {i} has no {err}: MaskingCollator needs the sampler's epoch and "
                    "index in every feature"
                ) from None
            if not (0 <= epoch < 2**32 and 0 <= index < 2**64):
                raise ValueError(f"feature {i}: epoch {epoch} or index {index} out of range")
            keys[i] = epoch, index

        def flat(name: str) -> np.ndarray:  # (N,): the rows' values end to end
            rows = [np.asarray(f[name]).reshape(-1) for f in features]
            return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

        return cls(
            input_ids=flat("input_ids"),
            token_type_ids=flat("token_type_ids"),
            lengths=np.array([len(f["input_ids"]) for f in features], dtype=np.int64),
            next_sentence_label=np.array(
                [int(f["next_sentence_label"]) for f in features], dtype=np.int64
            ),
            epoch=keys[:, 0].copy(),
            index=keys[:, 1].copy(),
        )

    def __len__(self) -> int:
        return int(self.lengths.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row `i` as the dict `from_features` takes (ids as array views)."""
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        start = int(self.lengths[:i].sum())
        end = start + int(self.lengths[i])
        return {
            "input_ids": self.input_ids[start:end],
            "token_type_ids": self.token_type_ids[start:end],
            "next_sentence_label": int(self.next_sentence_label[i]),
            "epoch": int(self.epoch[i]),
            "index": int(self.index[i]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


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


def _visit_order(starts: np.ndarray, order_word: np.ndarray) -> np.ndarray:
    """Each row's positions in visit order, (B, T) intp: the words' first positions (`starts`,
    (B, T) bool) by their random word (`order_word`, (B, T) uint64 below 2**32), ties by position,
    then every other position, by position. The stable argsort of
    `where(starts, order_word, 2**32)` along the rows.

    Computed as one plain sort of unique 64-bit keys `value << bits | position`: a value sort is
    several times faster than a stable argsort, and the position comes back from the low bits.
    """
    width = starts.shape[1]
    bits = max(1, (width - 1).bit_length())  # bits of the largest position
    if 33 + bits > 64:  # no room for the key (a width beyond 2**31): the plain argsort
        sort_key = np.where(starts, order_word, np.uint64(2**32))
        return np.argsort(sort_key, axis=1, kind="stable")
    position = np.arange(width, dtype=np.uint64)  # (T,)
    key = np.where(starts, order_word, np.uint64(2**32))  # (B, T), 33-bit values
    key <<= np.uint64(bits)
    key |= position
    key.sort(axis=1)
    key &= np.uint64((1 << bits) - 1)
    return key.astype(np.intp)


def _first_visited(candidate: np.ndarray, order_word: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The first `k` (B,) candidates (`candidate`, (B, T) bool) of each row in visit order,
    (B, T) bool: by `order_word` ((B, T) uint64 below 2**32), ties by position. Without
    whole-word masking every word is one position and fits, so these are the chosen positions.

    No argsort: the k-th smallest word of the row's candidates is a threshold; below it every
    candidate is taken, at it the first ones by position until k. Sorting the 32-bit words alone
    is an order of magnitude faster than sorting 64-bit (word, position) keys.
    """
    word = order_word.astype(np.uint32)  # (B, T), exact: the words are below 2**32
    # Others sort after every candidate (a tie at 2**32 - 1 changes no order statistic of the
    # candidates: the k-th smallest of all, k <= the row's candidates, is theirs).
    word[~candidate] = np.uint32(2**32 - 1)
    kth = np.sort(word, axis=1)[np.arange(word.shape[0]), np.maximum(k, 1) - 1]  # (B,)
    below = candidate & (word < kth[:, None])  # (B, T)
    at = candidate & (word == kth[:, None])  # (B, T): the ties at the threshold
    room = k - below.sum(axis=1)  # (B,), >= 1 where k >= 1
    # A row without candidates (k = 0) has none below or at its threshold.
    return below | (at & (np.cumsum(at, axis=1) <= room[:, None]))


def _batch_buffer(numel: int) -> torch.Tensor:
    """The (numel,) int64 buffer a batch's tensors are views of.

    A loader worker hands every storage over as a shared-memory segment and a file descriptor of
    its own: one storage instead of five saves about a quarter of a worker's time at seq 128
    (bench/loader.py). In a worker the buffer is allocated in shared memory from the start, as
    torch's `default_collate` does, so the hand-over copies nothing.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(numel, dtype=torch.long)
    elem = torch.empty(0, dtype=torch.long)
    return elem.new(elem._typed_storage()._new_shared(numel, device=elem.device))


class MaskingCollator:
    """Pads NSP pairs into a batch and masks it (see the module docstring).

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

    def __call__(self, features: PairBatch | Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad and mask `features` into a batch.

        `features` is a `PairBatch`, or a list of row dicts: `input_ids` (`[CLS] A [SEP] B [SEP]`,
        unpadded; a list, array or 1-D tensor), `token_type_ids` (same length),
        `next_sentence_label`, and the sampler's `epoch` and `index`. The batch has `input_ids`
        (masked), `token_type_ids`, `attention_mask` and `labels` (original id at chosen
        positions, -100 elsewhere), all (B, T) long with T the longest length rounded up to
        `pad_to_multiple_of`, and `next_sentence_label` (B,) long: contiguous views of one
        storage.
        """
        if not len(features):
            raise ValueError("MaskingCollator got an empty list of features")
        pairs = features if isinstance(features, PairBatch) else PairBatch.from_features(features)
        lengths = pairs.lengths  # (B,)
        multiple = self.cfg.pad_to_multiple_of
        batch, width = lengths.size, -(-int(lengths.max()) // multiple) * multiple
        if int(pairs.epoch.max()) >= 2**32:
            row = int(np.argmax(pairs.epoch))
            raise ValueError(f"feature {row}: epoch {int(pairs.epoch[row])} out of range")
        ids = pairs.input_ids  # (N,)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"input ids must be in [0, {self.vocab_size}) (vocab_size), got ids from "
                f"{ids.min()} to {ids.max()}: is the data from another tokenizer?"
            )

        size = batch * width
        out = _batch_buffer(4 * size + batch)
        views = out.numpy()
        input_ids, token_type_ids, attention_mask, labels = (
            views[i * size : (i + 1) * size].reshape(batch, width) for i in range(4)
        )
        next_sentence_label = views[4 * size :]  # (B,)

        # The rows end to end fill the real positions of the padded batch in row-major order.
        real = np.arange(width) < lengths[:, None]  # (B, T)
        input_ids.fill(self.pad_id)
        input_ids[real] = ids
        token_type_ids.fill(0)
        token_type_ids[real] = pairs.token_type_ids
        attention_mask[...] = real
        next_sentence_label[...] = pairs.next_sentence_label

        # Four random 32-bit words per position, each (B, T), from the counter
        # (position, epoch, index low, index high) under the key (seed low, seed high): they
        # depend on nothing else, so not on the padded width, the batch or the worker.
        epoch, index = pairs.epoch[:, None], pairs.index[:, None]  # (B, 1) each
        position = np.arange(width, dtype=np.uint64)[None, :]  # (1, T)
        order_word, action_word, token_word, _ = _philox4x32(
            (position, epoch, index & _LOW32, index >> _32), self._philox_key
        )

        chosen = self._choose(input_ids, real, order_word)  # (B, T)
        np.copyto(labels, input_ids)
        np.copyto(labels, IGNORE_INDEX, where=~chosen)

        # 80/10/10, decided per chosen position by a uniform u = word / 2**32 in [0, 1): u < p
        # exactly when word < ceil(p * 2**32) (p * 2**32 is exact in a double).
        at = np.flatnonzero(chosen)  # (n_chosen,) flat positions
        action = action_word.reshape(-1)[at]  # (n_chosen,)
        p_mask = self.cfg.mask_token_prob
        below_mask = math.ceil(p_mask * 2.0**32)
        below_random = math.ceil((p_mask + self.cfg.random_token_prob) * 2.0**32)
        flat_ids = input_ids.reshape(-1)  # a view: writes go into input_ids
        flat_ids[at[action < below_mask]] = self.mask_id
        to_random = at[(action >= below_mask) & (action < below_random)]
        # floor(word * n / 2**32): uniform over the n replacement ids up to a bias below n / 2**32.
        n_replacement = np.uint64(self._replacement_ids.size)
        draw = (token_word.reshape(-1)[to_random] * n_replacement) >> _32
        flat_ids[to_random] = self._replacement_ids[draw]

        names = ("input_ids", "token_type_ids", "attention_mask", "labels")
        tensors = {
            n: out[i * size : (i + 1) * size].view(batch, width) for i, n in enumerate(names)
        }
        return {**tensors, "next_sentence_label": out[4 * size :]}

    def _choose(
        self, input_ids: np.ndarray, real: np.ndarray, order_word: np.ndarray
    ) -> np.ndarray:
        """Positions to predict, (B, T) bool, from the ids, the real-token mask and one random
        32-bit word per position, all (B, T).

        Google's procedure, per sequence: group the candidate positions into words (one position
        per word without whole-word masking), visit the words in random order, take each word
        that still fits in the count, stop when the count is reached. It runs for the whole batch
        at once: the order is a sort of a random key per word; without whole-word masking the
        first `count` words are taken, with it the greedy walk is a cumulative sum plus a short
        loop over the words left after the first one that did not fit.
        """
        candidate = real & ~self._is_special[input_ids]  # (B, T)
        n_candidates = candidate.sum(axis=1)  # (B,)
        count = np.maximum(1, np.rint(n_candidates * self.cfg.mlm_probability)).astype(np.int64)
        if self.cfg.max_predictions_per_seq is not None:
            count = np.minimum(count, self.cfg.max_predictions_per_seq)
        rows = candidate.shape[0]

        if not self.cfg.whole_word_masking:
            return _first_visited(candidate, order_word, np.minimum(count, n_candidates))

        # A `##` token continues the word of the candidate just before it; after a special
        # token (or at the start) it starts a word of its own, so no word spans [SEP].
        continues = self._is_continuation[input_ids]  # (B, T), a fresh array
        continues[:, 1:] &= candidate[:, :-1]
        continues[:, 0] = False
        starts = candidate & ~continues  # (B, T): first position of each word

        # Words numbered in row-major order of their first position; every candidate belongs to
        # the last word started at or before it, which lies in the same row.
        word_of = (np.cumsum(starts, axis=None) - 1).reshape(starts.shape)  # (B, T)
        n_words = starts.sum(axis=1)  # (B,)
        word_length = np.zeros(starts.shape, dtype=np.int64)  # (B, T): at first positions
        word_length[starts] = np.bincount(word_of[candidate], minlength=int(n_words.sum()))

        # Visit order: words by the random word at their first position, ties by position (so
        # the order does not depend on the padded width); the other positions last, length 0.
        order = _visit_order(starts, order_word)  # (B, T)
        row = np.arange(rows)[:, None]  # (B, 1)
        visited_length = word_length[row, order]  # (B, T), 0 past the words

        # Until a word does not fit, the taken words are a prefix of the visit order.
        taken = (np.cumsum(visited_length, axis=1) <= count[:, None]) & (visited_length > 0)
        budget = count - (visited_length * taken).sum(axis=1)  # (B,)
        first_skipped = taken.sum(axis=1)  # (B,)
        walking = np.flatnonzero((budget > 0) & (first_skipped < n_words))
        if walking.size:
            self._walk_rest(visited_length[walking], taken, walking, budget[walking])

        word_taken = np.zeros_like(starts)  # (B, T): at first positions
        word_taken[row, order] = taken
        chosen = np.zeros_like(candidate)
        chosen[candidate] = word_taken[starts][word_of[candidate]]
        return chosen

    @staticmethod
    def _walk_rest(
        visited_length: np.ndarray, taken: np.ndarray, rows: np.ndarray, budget: np.ndarray
    ) -> None:
        """Google's walk past the first word that did not fit, for the rows with room left:
        `visited_length` (R, T) are their words' lengths in visit order, `budget` (R,) the room,
        `rows` (R,) their rows of `taken` (B, T), updated in place.

        The room only shrinks, so only words no longer than it can still be taken; those are
        gathered to the front of each row (in visit order), and a loop over them, vectorised
        over the rows, takes each that fits, until no row has room or words left.
        """
        # Words past the taken prefix that could fit: (R, T) bool, then their columns packed to
        # the left of each row in visit order, `-1` padding the rest.
        fits_ever = (visited_length > 0) & (visited_length <= budget[:, None]) & ~taken[rows]
        n_left = fits_ever.sum(axis=1)  # (R,)
        width = int(n_left.max())
        columns = np.full((rows.size, width), -1, dtype=np.int64)  # (R, W)
        columns[np.arange(width) < n_left[:, None]] = np.nonzero(fits_ever)[1]
        for j in range(width):
            live = (budget > 0) & (j < n_left)  # rows with room and a word left at rank j
            if not live.any():
                break
            r = np.flatnonzero(live)
            length = visited_length[r, columns[r, j]]  # (r,)
            fits = length <= budget[r]
            taken[rows[r[fits]], columns[r[fits], j]] = True
            budget[r[fits]] -= length[fits]
