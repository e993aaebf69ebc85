"""The tokenized corpus on disk, between tokenization and pair making: token ids and offsets written
as documents stream through the tokenizer, and read back a set of documents at a time.

`bert-prep` never holds the corpus in memory: documents are read one at a time, tokenized in
batches (`num_proc` worker processes) and appended to a *part*, a directory of four flat
little-endian files (T tokens, S sentences, D documents, in corpus order):

    tokens.bin              int32 (T,)  token ids of every sentence that has any
    sentence_lengths.bin    int32 (S,)  tokens per sentence (> 0), sum T
    document_sentences.bin  int32 (D,)  sentences per document, sum S (0: its text tokenized to
                                        nothing; it makes no pairs but keeps its number)
    document_tokens.bin     int64 (D,)  tokens per document, sum T

A whole build writes one part; a sliced build (data_prep/slices.py) one per slice, slice k of N
holding documents k, k+N, k+2N, … of the corpus. `TokenStore` reads the parts as the one corpus
they came from: it keeps 16 bytes per document in memory (two offsets) and reads a set of
documents' tokens with one `pread` per run of documents adjacent on disk.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.pairs import TokenizedDocuments

TOKENS = "tokens.bin"
SENTENCE_LENGTHS = "sentence_lengths.bin"
DOCUMENT_SENTENCES = "document_sentences.bin"
DOCUMENT_TOKENS = "document_tokens.bin"
_DTYPES = {
    TOKENS: np.dtype("<i4"),
    SENTENCE_LENGTHS: np.dtype("<i4"),
    DOCUMENT_SENTENCES: np.dtype("<i4"),
    DOCUMENT_TOKENS: np.dtype("<i8"),
}
# A tokenizer task: about this much text (characters). Large enough that process hand-over costs
# little against encoding (~1 s of work), small enough that the in-flight tasks take a few MB.
TASK_CHARS = 1 << 20
# Tasks in flight per worker: one being encoded, one waiting, so workers never starve.
TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class EncodedBatch:
    """Token ids of a batch of documents, as the part files hold them."""

    tokens: np.ndarray  # int32 (T,)
    sentence_lengths: np.ndarray  # int32 (S,), all > 0
    document_sentences: np.ndarray  # int32 (D,)
    document_tokens: np.ndarray  # int64 (D,)


class _Encoder:
    """Sentences of documents → `EncodedBatch`; a sentence that tokenizes to nothing is dropped."""

    def __init__(self, tokenizer_file: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_file)
        self.tok.no_truncation()
        self.tok.no_padding()
        self.encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def __call__(self, documents: list[list[str]]) -> EncodedBatch:
        flat = [s for doc in documents for s in doc]
        ids = [e.ids for e in self.encode(flat, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())
        )
        # Every document has at least one sentence (readers drop empty ones), so the starts
        # strictly increase and `reduceat` sums each document's own sentences.
        starts = np.cumsum([0] + [len(doc) for doc in documents[:-1]])
        kept = lengths > 0
        return EncodedBatch(
            tokens=tokens,
            sentence_lengths=lengths[kept].astype(np.int32),
            document_sentences=np.add.reduceat(kept.astype(np.int32), starts).astype(np.int32),
            document_tokens=np.add.reduceat(lengths, starts).astype(np.int64),
        )


_WORKER: dict[str, _Encoder] = {}


def _init_worker(tokenizer_file: str) -> None:
    _WORKER["encoder"] = _Encoder(tokenizer_file)


def _encode_in_worker(documents: list[list[str]]) -> EncodedBatch:
    return _WORKER["encoder"](documents)


def _tasks(documents: Iterable[list[str]]) -> Iterator[list[list[str]]]:
    """Documents grouped into tasks of about TASK_CHARS characters (a document is never split)."""
    task: list[list[str]] = []
    size = 0
    for doc in documents:
        task.append(doc)
        size += sum(map(len, doc))
        if size >= TASK_CHARS:
            yield task
            task, size = [], 0
    if task:
        yield task


def _ordered(submit, tasks: Iterator[Any], window: int) -> Iterator[Any]:
    """Results of `submit(task).result()` in task order, with at most `window` tasks in flight
    (the reader never runs ahead of the tokenizers by more than that)."""
    pending: deque = deque()
    for task in tasks:
        pending.append(submit(task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _PoolFuture:
    def __init__(self, result) -> None:
        self._result = result

    def result(self):
        return self._result.get()


def tokenize_to_part(
    documents: Iterable[list[str]], tokenizer_file: Path, num_proc: int, path: Path
) -> PartWriter:
    """Tokenize `documents` (each a list of sentences, in corpus order) into the part at `path`;
    returns its closed writer (counts). With `num_proc` > 1, worker processes encode while this
    process reads; with 1, a thread does (the tokenizer's own threads parallelise each batch)."""
    writer = PartWriter(path)
    window = TASKS_PER_WORKER * max(1, num_proc)
    try:
        if num_proc > 1:
            method = "fork" if sys.platform == "linux" else "spawn"
            ctx = multiprocessing.get_context(method)
            init = (str(tokenizer_file),)
            with ctx.Pool(num_proc, initializer=_init_worker, initargs=init) as pool:
                submit = lambda task: _PoolFuture(pool.apply_async(_encode_in_worker, (task,)))  # noqa: E731
                for batch in _ordered(submit, _tasks(documents), window):
                    writer.append(batch)
        else:
            encoder = _Encoder(str(tokenizer_file))
            with ThreadPoolExecutor(1) as pool:
                submit = lambda task: pool.submit(encoder, task)  # noqa: E731
                for batch in _ordered(submit, _tasks(documents), window):
                    writer.append(batch)
    finally:
        writer.close()
    return writer


class PartWriter:
    """Appends `EncodedBatch`es to the four files of a part (created, or emptied, at `path`)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._files = {name: open(path / name, "wb") for name in _DTYPES}  # noqa: SIM115
        self.num_documents = 0
        self.num_sentences = 0
        self.num_tokens = 0

    def append(self, batch: EncodedBatch) -> None:
        for name, array in (
            (TOKENS, batch.tokens),
            (SENTENCE_LENGTHS, batch.sentence_lengths),
            (DOCUMENT_SENTENCES, batch.document_sentences),
            (DOCUMENT_TOKENS, batch.document_tokens),
        ):
            self._files[name].write(np.ascontiguousarray(array, dtype=_DTYPES[name]).tobytes())
        self.num_documents += len(batch.document_sentences)
        self.num_sentences += len(batch.sentence_lengths)
        self.num_tokens += len(batch.tokens)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _read_all(path: Path, name: str) -> np.ndarray:
    return np.fromfile(path / name, dtype=_DTYPES[name])


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise EOFError(f"token store file ends early at byte {offset + done}")
        done += got


class TokenStore:
    """Parts read as one corpus: with P parts, document i of the corpus is document i // P of part
    i % P (a whole build has P = 1)."""

    def __init__(self, parts: list[Path]) -> None:
        self.parts = list(parts)
        counts = [_read_all(p, DOCUMENT_SENTENCES) for p in self.parts]
        tokens = [_read_all(p, DOCUMENT_TOKENS) for p in self.parts]
        num = len(self.parts)
        self.num_documents = sum(len(c) for c in counts)
        for k, c in enumerate(counts):
            if len(c) != len(range(k, self.num_documents, num)):
                raise ValueError(
                    f"part {self.parts[k]} holds {len(c)} documents; documents {k}, {k + num}, … "
                    f"of {self.num_documents} are {len(range(k, self.num_documents, num))}"
                )
        # Per corpus document (D,): its sentences and tokens, and where they start in its part.
        self.document_sentences = np.zeros(self.num_documents, dtype=np.int32)
        self.document_tokens = np.zeros(self.num_documents, dtype=np.int64)
        self._sentence_start = np.zeros(self.num_documents, dtype=np.int64)
        self._token_start = np.zeros(self.num_documents, dtype=np.int64)
        for k in range(num):
            self.document_sentences[k::num] = counts[k]
            self.document_tokens[k::num] = tokens[k]
            self._sentence_start[k::num] = _offsets(counts[k])[:-1]
            self._token_start[k::num] = _offsets(tokens[k])[:-1]

    def _read(self, name: str, documents: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
        """The concatenated `sizes[j]` elements at `starts[j]` of file `name` in document j's part."""
        dtype = _DTYPES[name]
        out = np.empty(int(sizes.sum()), dtype=dtype)
        part = documents % len(self.parts)
        # Runs: consecutive requested documents stored back to back in the same part file.
        breaks = np.flatnonzero((part[1:] != part[:-1]) | (starts[1:] != starts[:-1] + sizes[:-1]))
        run_first = np.concatenate([[0], breaks + 1])
        run_last = np.concatenate([breaks, [len(documents) - 1]])
        out_offsets = _offsets(sizes)
        fds = [os.open(p / name, os.O_RDONLY) for p in self.parts]
        try:
            for first, last in zip(run_first.tolist(), run_last.tolist(), strict=True):
                lo, hi = int(out_offsets[first]), int(out_offsets[last + 1])
                if hi > lo:
                    fd = fds[int(part[first])]
                    _pread_into(fd, out[lo:hi], int(starts[first]) * dtype.itemsize)
        finally:
            for fd in fds:
                os.close(fd)
        return out

    def read_tokens(self, documents: np.ndarray) -> np.ndarray:
        """Token ids (int32) of `documents` (corpus numbers, increasing), concatenated."""
        documents = np.asarray(documents, dtype=np.int64)
        return self._read(
            TOKENS, documents, self._token_start[documents], self.document_tokens[documents]
        )

    def read(self, documents: np.ndarray, tokens: bool = True) -> TokenizedDocuments:
        """`documents` (corpus numbers, increasing, each with at least one sentence) as flat arrays;
        with `tokens=False` the offsets only (`tokens` empty): pair making needs no token ids."""
        documents = np.asarray(documents, dtype=np.int64)
        sentences = self.document_sentences[documents].astype(np.int64)
        lengths = self._read(
            SENTENCE_LENGTHS, documents, self._sentence_start[documents], sentences
        )
        return TokenizedDocuments(
            tokens=self.read_tokens(documents) if tokens else np.zeros(0, dtype=np.int32),
            sentence_offsets=_offsets(lengths),
            document_offsets=_offsets(sentences),
        )
