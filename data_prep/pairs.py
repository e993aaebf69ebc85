"""Next-sentence-prediction pairs with the semantics of Google's `create_pretraining_data.py`.

For each pass (`dupe_factor` of them) and each document, `document_pairs` does what Google's
`create_instances_from_document` does, with the same draws from a `random.Random`:

- target length `max_seq_length - 3`, or with probability `short_seq_prob` `randint(2, max)`
  (drawn once per document and pass, as in Google's code);
- sentences are gathered into a chunk until the target is reached or the document ends;
- A = the first `a_end = randint(1, len(chunk) - 1)` sentences of the chunk (all of a one-sentence
  chunk);
- B = the rest of the chunk (label 0, "IsNext") or, with probability 0.5 and always for a
  one-sentence chunk, sentences of another random document from a random sentence on, until the
  target is filled (label 1, "NotNext"); the chunk's unused sentences are put back;
- the longer of A and B loses one token at a time, at its front or back with probability 0.5 each,
  until the pair fits; the pair is `[CLS] A [SEP] B [SEP]`.

A one-sentence document can start only NotNext pairs; it still gives B's to other documents.
Unlike Google's single random stream, each (pass, document) has its own `random.Random` seeded from
(seed, salt, pass, document), so the result does not depend on how the work is split across
processes. Pairs are kept as token spans of one flat token array until `pair_columns` builds them.

Pools. Google's script draws the random document from the documents it holds in memory, one input
shard at a time. Here a split is cut into *pools* of about `pool_tokens` tokens (`assign_pools`),
and a random B comes from a document of the same pool; one pool is in memory at a time. A split of
at most `pool_tokens` tokens is one pool: every document of the split is a candidate, as in a
single Google shard. A larger split is cut into P = ceil(tokens / pool_tokens) pools by a seeded
random partition of its documents (balanced by tokens), so each pool is a random sample of the
whole split, never a stretch of related documents. What changes against one pool is which
document a random B is drawn from: each document's stream stays seeded by its number in the split,
so its target lengths, chunks and A/B cuts are the same up to its first random-next draw; that
draw ranges over the pool's documents instead of the split's, and as it consumes a different
number of random bits, the document's later draws differ too. The statistics (random-next
fraction, short targets, A/B lengths) stay Google's (tests/data_prep/test_nsp_pairs.py checks
them within 1% of one pool's).
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

CLS_ID = 2
SEP_ID = 3
RANDOM_NEXT_PROB = 0.5


@dataclass(frozen=True)
class TokenizedDocuments:
    """Documents as flat arrays: document d has sentences `document_offsets[d]:document_offsets[d+1]`,
    sentence s has tokens `tokens[sentence_offsets[s]:sentence_offsets[s+1]]` (every sentence has
    at least one token, every document at least one sentence)."""

    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @classmethod
    def from_lists(cls, documents: Sequence[Sequence[Sequence[int]]]) -> TokenizedDocuments:
        """From nested lists: documents → sentences → token ids (empty ones are dropped)."""
        tokens: list[int] = []
        sentence_offsets = [0]
        document_offsets = [0]
        for doc in documents:
            for sentence in doc:
                if len(sentence):
                    tokens.extend(sentence)
                    sentence_offsets.append(len(tokens))
            if len(sentence_offsets) - 1 > document_offsets[-1]:
                document_offsets.append(len(sentence_offsets) - 1)
        return cls(
            tokens=np.asarray(tokens, dtype=np.int32),
            sentence_offsets=np.asarray(sentence_offsets, dtype=np.int64),
            document_offsets=np.asarray(document_offsets, dtype=np.int64),
        )

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    def sentences_per_document(self) -> np.ndarray:
        return np.diff(self.document_offsets)

    def tokens_per_document(self) -> np.ndarray:
        return np.diff(self.sentence_offsets[self.document_offsets])

    def subset(self, documents: np.ndarray) -> TokenizedDocuments:
        """The documents at `documents` (increasing positions), as their own flat arrays."""
        documents = np.asarray(documents, dtype=np.int64)
        first = self.document_offsets[documents]
        counts = self.document_offsets[documents + 1] - first
        sentences = _ranges(first, counts)
        lengths = np.diff(self.sentence_offsets)[sentences]
        starts = self.sentence_offsets[sentences]
        tokens = self.tokens[_ranges(starts, lengths)]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        doc_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=doc_offsets[1:])
        return TokenizedDocuments(
            tokens=tokens, sentence_offsets=offsets, document_offsets=doc_offsets
        )


@dataclass(frozen=True)
class PairSpans:
    """Pairs as half-open spans of `TokenizedDocuments.tokens`, plus facts for reports and tests."""

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random_next: np.ndarray
    """bool; the `next_sentence_label` (1 = random)."""
    document: np.ndarray
    """Document of A."""
    b_document: np.ndarray
    """Document B was taken from (A's for a true continuation)."""
    short_target: np.ndarray
    """bool; the document's target length was drawn shorter (probability short_seq_prob)."""
    target_length: np.ndarray
    chunk_sentences: np.ndarray
    """Sentences in the chunk A was cut from; a one-sentence chunk always gives a random B."""
    dupe: np.ndarray
    """The pass (0 … dupe_factor - 1) that made the pair."""

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, index: np.ndarray) -> PairSpans:
        """The pairs at `index` (an integer array or a boolean mask)."""
        return PairSpans(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class Pair(NamedTuple):
    """One pair in the column format of docs/ARCHITECTURE.md, with its facts."""

    input_ids: list[int]
    token_type_ids: list[int]
    next_sentence_label: int
    document: int
    b_document: int
    short_target: bool
    target_length: int
    chunk_sentences: int
    dupe: int


_COLUMNS = tuple(f.name for f in fields(PairSpans))
_FIELDS = len(_COLUMNS)
# Column dtypes: token offsets need int64 (a pool may hold more than 2**31 tokens); the facts fit
# smaller types, which keeps a pool's spans at 51 bytes per pair instead of 88.
_DTYPES = {"a_start": np.int64, "a_end": np.int64, "b_start": np.int64, "b_end": np.int64,
           "is_random_next": np.bool_, "document": np.int32, "b_document": np.int32,
           "short_target": np.bool_, "target_length": np.int32, "chunk_sentences": np.int32,
           "dupe": np.int16}  # fmt: skip


def document_pairs(
    sentence_offsets: Sequence[int],
    document_offsets: Sequence[int],
    document: int,
    rng: random.Random,
    max_seq_length: int,
    short_seq_prob: float,
    out: list[list[int]],
    dupe: int = 0,
) -> None:
    """Append the pairs of one document to the columns `out` (one list per `PairSpans` field).

    `sentence_offsets` / `document_offsets` are those of `TokenizedDocuments`, as Python lists.
    """
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    short = False
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
        short = True
    first, last = document_offsets[document], document_offsets[document + 1]
    num_documents = len(document_offsets) - 1
    chunk_start = first
    current_length = 0
    i = first
    while i < last:
        current_length += sentence_offsets[i + 1] - sentence_offsets[i]
        if i == last - 1 or current_length >= target:
            chunk_len = i + 1 - chunk_start
            a_sentences = rng.randint(1, chunk_len - 1) if chunk_len >= 2 else 1
            a_lo = sentence_offsets[chunk_start]
            a_hi = sentence_offsets[chunk_start + a_sentences]
            if chunk_len == 1 or rng.random() < RANDOM_NEXT_PROB:
                is_random = 1
                target_b = target - (a_hi - a_lo)
                for _ in range(10):
                    b_doc = rng.randint(0, num_documents - 1)
                    if b_doc != document:
                        break
                r_first, r_last = document_offsets[b_doc], document_offsets[b_doc + 1]
                j = r_first + rng.randint(0, r_last - r_first - 1)
                b_lo = sentence_offsets[j]
                b_hi = sentence_offsets[j + 1]
                while b_hi - b_lo < target_b and j + 1 < r_last:
                    j += 1
                    b_hi = sentence_offsets[j + 1]
                i -= chunk_len - a_sentences  # put the unused sentences back
            else:
                is_random = 0
                b_doc = document
                b_lo, b_hi = a_hi, sentence_offsets[i + 1]
            while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
                if a_hi - a_lo > b_hi - b_lo:
                    if rng.random() < 0.5:
                        a_lo += 1
                    else:
                        a_hi -= 1
                elif rng.random() < 0.5:
                    b_lo += 1
                else:
                    b_hi -= 1
            for column, value in zip(
                out,
                (
                    a_lo,
                    a_hi,
                    b_lo,
                    b_hi,
                    is_random,
                    document,
                    b_doc,
                    short,
                    target,
                    chunk_len,
                    dupe,
                ),
                strict=True,
            ):
                column.append(value)
            chunk_start = i + 1
            current_length = 0
        i += 1


def _rng(seed: int, salt: str, dupe: int, document: int) -> random.Random:
    return random.Random(f"{seed}/{salt}/{dupe}/{document}")


# Shared with worker processes (set by the pool initializer, or directly in one process).
_STATE: dict[str, object] = {}


def _init_worker(
    sentence_offsets: list[int], document_offsets: list[int], document_ids: list[int], params: tuple
) -> None:
    _STATE["sentence_offsets"] = sentence_offsets
    _STATE["document_offsets"] = document_offsets
    _STATE["document_ids"] = document_ids
    _STATE["params"] = params


def _run_job(job: tuple[int, int, int]) -> list[np.ndarray]:
    dupe, doc_lo, doc_hi = job
    sentence_offsets = _STATE["sentence_offsets"]
    document_offsets = _STATE["document_offsets"]
    document_ids = _STATE["document_ids"]
    max_seq_length, short_seq_prob, seed, salt = _STATE["params"]  # type: ignore[misc]
    out: list[list[int]] = [[] for _ in range(_FIELDS)]
    for document in range(doc_lo, doc_hi):
        rng = _rng(seed, salt, dupe, document_ids[document])  # type: ignore[index]
        document_pairs(
            sentence_offsets,  # type: ignore[arg-type]
            document_offsets,  # type: ignore[arg-type]
            document,
            rng,
            max_seq_length,
            short_seq_prob,
            out,
            dupe,
        )
    return [
        np.asarray(column, dtype=_DTYPES[name]) for name, column in zip(_COLUMNS, out, strict=True)
    ]


def make_pair_spans(
    docs: TokenizedDocuments,
    *,
    max_seq_length: int,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 12345,
    salt: str = "",
    shuffle: bool = True,
    num_proc: int = 1,
    document_ids: np.ndarray | None = None,
) -> PairSpans:
    """All pairs of `dupe_factor` passes over `docs` (one pool: random B's come from `docs`),
    shuffled with `pair_order(seed, salt)` unless `shuffle=False`; the same for any `num_proc`.

    `document_ids` numbers the documents for their random streams (default 0, 1, …): a pool passes
    its documents' numbers in the split, so that a document's pairs depend on its pool only
    through the random-next draws."""
    if max_seq_length < 8:
        raise ValueError(f"max_seq_length must be >= 8, got {max_seq_length}")
    if docs.num_documents < 1:
        raise ValueError("no documents")
    n = docs.num_documents
    per_job = max(1, min(2000, -(-n // (4 * max(1, num_proc)))))
    jobs = [
        (d, lo, min(n, lo + per_job)) for d in range(dupe_factor) for lo in range(0, n, per_job)
    ]
    if document_ids is None:
        document_ids = np.arange(n)
    if len(document_ids) != n:
        raise ValueError(f"{len(document_ids)} document_ids for {n} documents")
    # Python lists: `document_pairs` indexes them once per sentence (a NumPy scalar costs 5x more).
    init_args = (
        docs.sentence_offsets.tolist(),
        docs.document_offsets.tolist(),
        np.asarray(document_ids).tolist(),
        (max_seq_length, short_seq_prob, seed, salt),
    )
    if num_proc > 1 and len(jobs) > 1:
        with _pool(min(num_proc, len(jobs)), init_args) as pool:
            results = pool.map(_run_job, jobs, chunksize=1)
    else:
        _init_worker(*init_args)
        try:
            results = [_run_job(job) for job in jobs]
        finally:
            _STATE.clear()
    columns = {}
    for k, name in enumerate(_COLUMNS):  # one column at a time: the jobs' pieces go as they join
        columns[name] = np.concatenate([r[k] for r in results])
        for r in results:
            r[k] = None
    del results
    spans = PairSpans(**columns)
    del columns
    if shuffle:
        spans = spans.take(pair_order(seed, salt).permutation(len(spans)))
    return spans


def pair_order(seed: int, salt: str) -> np.random.Generator:
    """The generator that shuffles a split's pairs: pool k's pairs are shuffled by its k-th
    `permutation` (pools are written one after the other, so with one pool the whole split is
    shuffled, as Google shuffles a shard's instances)."""
    return np.random.default_rng(_numpy_seed(seed, salt))


def _numpy_seed(seed: int, salt: str) -> list[int]:
    return [seed & 0xFFFFFFFF, *salt.encode()]


def pooled_pair_spans(
    read: Callable[[np.ndarray], TokenizedDocuments],
    document_tokens: np.ndarray,
    *,
    pool_tokens: int,
    max_seq_length: int,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 12345,
    salt: str = "",
    num_proc: int = 1,
) -> Iterator[tuple[np.ndarray, PairSpans]]:
    """The pairs of a split one pool at a time: (the pool's documents, its shuffled pairs) per
    pool (`assign_pools`). `read(pool)` gives the pool's documents (positions in the split,
    increasing) as `TokenizedDocuments` (only the offsets are used: the spans index the pool's
    tokens, which the caller reads when it builds the rows). `document_tokens` (D,) is the
    split's tokens per document. With one pool this is `make_pair_spans` of the split."""
    order = pair_order(seed, salt)
    for pool in assign_pools(document_tokens, pool_tokens, seed, salt):
        spans = make_pair_spans(
            read(pool),
            max_seq_length=max_seq_length,
            short_seq_prob=short_seq_prob,
            dupe_factor=dupe_factor,
            seed=seed,
            salt=salt,
            shuffle=False,
            num_proc=num_proc,
            document_ids=pool,
        )
        spans = spans.take(order.permutation(len(spans)))  # the unshuffled copy goes at once
        yield pool, spans
        del spans


def assign_pools(document_tokens: np.ndarray, pool_tokens: int, seed: int, salt: str) -> list:
    """The pools of a split: lists of positions in `document_tokens` (the tokens of each of the
    split's documents, in corpus order), each increasing, together covering every document once.

    One pool when the split has at most `pool_tokens` tokens. Else P = ceil(tokens / pool_tokens)
    pools: the documents in a seeded random order are cut where the running token count passes
    k * tokens / P, so each pool holds about tokens / P <= pool_tokens tokens (plus at most one
    document that straddles the cut) and is a random sample of the split. Memory: a few int64
    arrays of the split's document count."""
    n = len(document_tokens)
    total = int(np.sum(document_tokens))
    num_pools = max(1, -(-total // pool_tokens))
    if num_pools == 1 or n <= 1:
        return [np.arange(n)]
    order = np.random.default_rng([*_numpy_seed(seed, salt), 1]).permutation(n)
    sizes = np.asarray(document_tokens, dtype=np.int64)[order]
    first_token = np.cumsum(sizes) - sizes
    pool_of = np.minimum(first_token * num_pools // total, num_pools - 1)
    by_pool = np.argsort(pool_of, kind="stable")
    bounds = np.searchsorted(pool_of[by_pool], np.arange(num_pools + 1))
    pools = [np.sort(order[by_pool[lo:hi]]) for lo, hi in itertools.pairwise(bounds.tolist())]
    return [p for p in pools if len(p)]


def _pool(processes: int, init_args: tuple):
    method = "fork" if sys.platform == "linux" else "spawn"
    ctx = multiprocessing.get_context(method)
    return ctx.Pool(processes, initializer=_init_worker, initargs=init_args)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + l)` for each (s, l)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shifts + np.arange(total, dtype=np.int64)


def pair_columns(
    tokens: np.ndarray, spans: PairSpans, cls_id: int = CLS_ID, sep_id: int = SEP_ID
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Build `[CLS] A [SEP] B [SEP]` for every pair.

    Returns flat `input_ids` (int32) and `token_type_ids` (int8), the row offsets (int64, one more
    than the pairs) and `next_sentence_label` (int8).
    """
    ids, types, offsets = pair_tokens(
        tokens, spans.a_start, spans.a_end, spans.b_start, spans.b_end, cls_id, sep_id
    )
    return ids, types, offsets, spans.is_random_next.astype(np.int8)


def pair_tokens(
    tokens: np.ndarray,
    a_start: np.ndarray,
    a_end: np.ndarray,
    b_start: np.ndarray,
    b_end: np.ndarray,
    cls_id: int = CLS_ID,
    sep_id: int = SEP_ID,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`pair_columns` from the spans' arrays (N,): flat `input_ids` (int32, L = sum of the pair
    lengths), `token_type_ids` (int8, L) and row offsets (int64, N + 1). Temporaries: three int64
    arrays of L, so callers pass a bounded number of pairs at a time."""
    len_a = a_end - a_start
    len_b = b_end - b_start
    lengths = len_a + len_b + 3
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = offsets[:-1]
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    types = np.zeros(int(offsets[-1]), dtype=np.int8)
    ids[starts] = cls_id
    ids[starts + 1 + len_a] = sep_id
    ids[offsets[1:] - 1] = sep_id
    ids[_ranges(starts + 1, len_a)] = tokens[_ranges(a_start, len_a)]
    ids[_ranges(starts + 2 + len_a, len_b)] = tokens[_ranges(b_start, len_b)]
    types[_ranges(starts + 2 + len_a, len_b + 1)] = 1
    return ids, types, offsets


def create_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    *,
    max_seq_length: int,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 12345,
    shuffle: bool = True,
) -> list[Pair]:
    """Pairs from nested token lists (documents → sentences → ids), as plain Python rows."""
    docs = TokenizedDocuments.from_lists(documents)
    spans = make_pair_spans(
        docs,
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        dupe_factor=dupe_factor,
        seed=seed,
        shuffle=shuffle,
    )
    ids, types, offsets, labels = pair_columns(docs.tokens, spans)
    return [
        Pair(
            input_ids=ids[offsets[k] : offsets[k + 1]].tolist(),
            token_type_ids=types[offsets[k] : offsets[k + 1]].tolist(),
            next_sentence_label=int(labels[k]),
            document=int(spans.document[k]),
            b_document=int(spans.b_document[k]),
            short_target=bool(spans.short_target[k]),
            target_length=int(spans.target_length[k]),
            chunk_sentences=int(spans.chunk_sentences[k]),
            dupe=int(spans.dupe[k]),
        )
        for k in range(len(spans))
    ]
