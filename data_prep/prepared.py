"""What a whole `bert-prep` build and a sliced one (data_prep/slices.py) share: the request (config,
tokenizer and opened corpus), streaming the corpus through the tokenizer into a token store
(data_prep/token_store.py), and writing the prepared directory from that store (split, pairs,
shuffle, Arrow shards, manifest.json with shard checksums).

`data_prep/build.py` (the app) imports `data_prep/slices.py`, and both import this module, which
imports neither, so the imports have no cycle. The same code writes the output whether the store
holds one part or the slices' parts, which is what makes the two outputs equal.

Memory does not grow with the corpus, beyond an index of under 100 bytes per document: documents
are read and tokenized a batch at a time; each split is paired one pool (`pool_tokens`,
data_prep/pairs.py) at a time, and its rows are built and written a chunk at a time
(`ROWS_PER_CHUNK`) into shards of `save_to_disk`'s layout (data_prep/split_writer.py). Writing needs the split's row count first, so
each split is paired in two passes over its pools: the first makes every pool's pair spans (4
int64 + 1 label per pair, kept on disk) and counts them, the second reads each pool's tokens
again and writes its rows.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.config import PrepAppConfig, as_dict, corpus_identity
from data_prep.files import read_json, remove_tree, sha256_file, write_json
from data_prep.tokenizer import diff_keys, load_tokenizer_dir, special_token_ids
from pretrain.errors import UserError

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
# Config fields that do not change the prepared data (ignored when deciding to reuse it).
_NOT_RECORDED = (
    "work_dir",
    "output_dir",
    "tokenizer_dir",
    "force",
    "num_proc",
    "num_slices",
    "slice_index",
    "slices_dir",
)


# A directory of the build's own inside its temporary output (token store, pair spans); removed
# before the output is renamed into place.
WORK_DIR = ".bert-prep-work"
# Pairs built and handed to the shard writer at a time: 16,384 pairs of up to max_seq_length
# tokens; at 128 tokens the chunk's temporaries (`pairs.pair_tokens`) take about 60 MB.
ROWS_PER_CHUNK = 16_384
# Rows built past a chunk's end so that the Arrow buffers of its last batch go on for the 8-byte
# padding `save_to_disk` fills from the following rows (data_prep/split_writer.py).
LOOKAHEAD_ROWS = 8


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a recorded config that determines the output (compared to reuse a directory).

    A manifest written before `pool_tokens` existed is compared as if it had today's default:
    those builds paired each split as one pool, which is what the default does for any split
    that fits in it (the demo corpus's)."""
    data = {k: v for k, v in config.items() if k not in _NOT_RECORDED}
    if isinstance(data.get("corpus"), dict):
        data["corpus"] = corpus_identity(data["corpus"])
    if data and "pool_tokens" not in data:
        data["pool_tokens"] = PrepAppConfig.pool_tokens
    return data


def _check_documents(num_documents: int) -> None:
    if num_documents < 2:
        raise UserError(
            f"the corpus has {num_documents} document(s); bert-prep needs at least 2 (one for "
            "validation); add text or separate documents with blank lines in .txt files"
        )


def validation_mask(num_documents: int, validation_fraction: float, seed: int) -> np.ndarray:
    """Seeded choice of the validation documents: a bool array (num_documents,), True for the
    validation split; at least one document on each side. The shuffle is `random.Random`'s on an
    int64 `array` (8 bytes per document, not a list of Python ints), the same draws either way."""
    _check_documents(num_documents)
    num_val = min(num_documents - 1, max(1, round(num_documents * validation_fraction)))
    order = array("q", range(num_documents))
    random.Random(f"{seed}/split").shuffle(order)
    mask = np.zeros(num_documents, dtype=bool)
    mask[np.frombuffer(order, dtype=np.int64)[:num_val]] = True
    return mask


def split_documents(
    num_documents: int, validation_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split of document indices into (train, validation), each sorted, each non-empty."""
    mask = validation_mask(num_documents, validation_fraction, seed)
    return np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist()


def _features():
    import datasets

    return datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "token_type_ids": datasets.List(datasets.Value("int8")),
            "next_sentence_label": datasets.Value("int8"),
        }
    )


def pair_table(tokens: np.ndarray, spans: np.ndarray, labels: np.ndarray, special_ids: dict):
    """Rows with the columns of docs/ARCHITECTURE.md for pairs `spans` (4, N): a_start, a_end,
    b_start, b_end in `tokens`, and `labels` (N,) their next_sentence_label; `special_ids` as in
    the manifest (`special_token_ids`)."""
    import pyarrow as pa

    from data_prep.pairs import pair_tokens

    ids, types, offsets = pair_tokens(tokens, *spans, special_ids["cls"], special_ids["sep"])
    offsets32 = pa.array(offsets.astype(np.int32))  # a chunk holds far fewer than 2**31 tokens
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(offsets32, pa.array(ids, type=pa.int32())),
            "token_type_ids": pa.ListArray.from_arrays(offsets32, pa.array(types, type=pa.int8())),
            "next_sentence_label": pa.array(labels.astype(np.int8), type=pa.int8()),
        }
    )


def _versions() -> dict[str, str]:
    import datasets
    import pyarrow
    import tokenizers

    return {
        "python": platform.python_version(),
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
    }


def _check_existing(
    out: Path, cfg: PrepAppConfig, tokenizer_sha: str, record: dict, sources: list[dict]
) -> bool:
    """`record` is the full resolved config of this request."""
    """True when `out` is a finished build of the same request (reuse it); else a `UserError`."""
    manifest_file = out / MANIFEST
    if not manifest_file.is_file():
        raise UserError(
            f"{out} exists but has no {MANIFEST} (not a finished bert-prep output); pass force=true "
            "to replace it or choose another output_dir"
        )
    manifest = read_json(manifest_file)
    old_sha = manifest.get("tokenizer", {}).get("sha256")
    if old_sha != tokenizer_sha:
        old_dir = manifest.get("tokenizer", {}).get("source_dir")
        raise UserError(
            f"{out} was built with another tokenizer ({old_dir}, sha256 {str(old_sha)[:12]}…) than "
            f"{cfg.tokenizer_dir} (sha256 {tokenizer_sha[:12]}…); pass force=true to rebuild it or "
            "choose a different output_dir"
        )
    differing = diff_keys(
        comparable_config(manifest.get("config") or {}), comparable_config(record)
    )
    old_sources = [
        {k: s.get(k) for k in ("name", "kind", "sha256")} for s in manifest.get("sources", [])
    ]
    if old_sources != sources:
        differing.append("corpus contents (sources sha256)")
    if differing:
        raise UserError(
            f"{out} was built with another config (differs in: {', '.join(differing)}); pass "
            "force=true to rebuild it or choose a different output_dir"
        )
    return True


@dataclass
class Request:
    """What a build (or a slice, or a merge) of `cfg` needs before reading text."""

    cfg: PrepAppConfig
    tokenizer_dir: Path
    tok: Any
    tokenizer_sha: str
    special_ids: dict[str, int]
    record: dict[str, Any]
    """The full resolved config, as manifest.json records it."""
    sources: list
    """Opened (not yet read) `Source`s of the corpus."""
    source_keys: list[dict[str, Any]]
    num_proc: int
    start: float

    @classmethod
    def open(cls, cfg: PrepAppConfig) -> Request:
        from data_prep.corpus import open_sources

        start = time.perf_counter()
        tokenizer_dir = Path(cfg.tokenizer_dir)
        tok = load_tokenizer_dir(tokenizer_dir)
        sources = open_sources(cfg.corpus)
        return cls(
            cfg=cfg,
            tokenizer_dir=tokenizer_dir,
            tok=tok,
            tokenizer_sha=sha256_file(tokenizer_dir / "tokenizer.json"),
            special_ids=special_token_ids(tok, tokenizer_dir),
            record=as_dict(cfg),
            sources=sources,
            source_keys=[{"name": s.name, "kind": s.kind, "sha256": s.sha256} for s in sources],
            num_proc=cfg.num_proc or os.cpu_count() or 1,
            start=start,
        )

    def finished(self) -> bool:
        """True when output_dir holds a finished build of this request (reuse it, unless
        force=true); a different build there is a `UserError`."""
        out = Path(self.cfg.output_dir)
        if not out.exists() or self.cfg.force:
            return False
        _check_existing(out, self.cfg, self.tokenizer_sha, self.record, self.source_keys)
        print(
            f"reusing prepared data {out} (same config, tokenizer and corpus; force=true rebuilds)",
            flush=True,
        )
        return True


@contextlib.contextmanager
def tokenizer_threads(enabled: bool) -> Iterator[None]:
    """Worker processes tokenize single-threaded: a process that forks after using the tokenizer's
    thread pool gets it disabled anyway, with a warning."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    if not enabled and old is None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


def check_pairable(cfg: PrepAppConfig, num_documents: int, num_multi_sentence: int) -> None:
    """A `UserError` when the corpus cannot give pairs: fewer than 2 documents, or none with 2 or
    more sentences."""
    if num_multi_sentence == 0:
        raise UserError(
            f"no document of corpus {cfg.corpus.name!r} has 2 or more sentences, so no true-next "
            "pair can be made; give documents with several sentences (a .txt document is a block "
            "of lines; a blank line starts the next document)"
        )
    _check_documents(num_documents)


@dataclass
class ReadCounts:
    """What streaming the corpus through the tokenizer counted."""

    num_documents: int = 0
    """Documents of the whole corpus (a slice reads them all and tokenizes its own)."""
    num_tokenized: int = 0
    num_multi_sentence: int = 0
    """Tokenized documents with 2 or more sentences (before tokenization)."""
    num_bytes: int = 0
    """UTF-8 size of the tokenized documents' sentences, for throughput reports."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """manifest.json's `sources`, filled once the corpus is read."""


def tokenize_corpus(req: Request, part: Path, num_slices: int = 1, slice_index: int = 0):
    """Read the corpus one document at a time and tokenize documents `slice_index`,
    `slice_index + num_slices`, … (all of them by default) into the token store part `part`.
    Returns the `ReadCounts`."""
    from data_prep.corpus import document_bytes, iter_documents
    from data_prep.token_store import tokenize_to_part

    counts = ReadCounts()

    def chosen() -> Iterator[list[str]]:
        for index, doc in enumerate(iter_documents(req.cfg.corpus, req.sources)):
            counts.num_documents += 1
            if index % num_slices == slice_index:
                counts.num_tokenized += 1
                counts.num_multi_sentence += len(doc.sentences) >= 2
                counts.num_bytes += document_bytes(doc)
                yield doc.sentences

    with tokenizer_threads(req.num_proc == 1):
        tokenize_to_part(chosen(), req.tokenizer_dir / "tokenizer.json", req.num_proc, part)
    counts.sources = [s.info() for s in req.sources]
    return counts


@dataclass
class _PairedSplit:
    """A split after the first pass: its pools and their pair spans on disk, and the counts."""

    documents: np.ndarray
    """Corpus numbers of the split's documents that have tokens (D,), increasing."""
    pools: list
    """Positions in `documents` of each pool's documents."""
    span_files: list
    num_pairs: int = 0
    num_tokens: int = 0
    num_random_next: int = 0


def _pair_split(req: Request, store, name: str, documents: np.ndarray, work: Path) -> _PairedSplit:
    """First pass: every pool's pairs, shuffled, as spans in `work` (`{name}-{k}.npy`: int64 (5, N)
    a_start, a_end, b_start, b_end in the pool's tokens, and the label)."""
    from data_prep.pairs import pooled_pair_spans

    cfg = req.cfg
    paired = _PairedSplit(documents=documents, pools=[], span_files=[])
    pools = pooled_pair_spans(
        lambda pool: store.read(documents[pool], tokens=False),
        store.document_tokens[documents],
        pool_tokens=cfg.pool_tokens,
        max_seq_length=cfg.max_seq_length,
        short_seq_prob=cfg.short_seq_prob,
        dupe_factor=cfg.dupe_factor,
        seed=cfg.seed,
        salt=name,
        num_proc=req.num_proc,
    )
    for k, (pool, spans) in enumerate(pools):
        paired.pools.append(pool)
        path = work / f"{name}-{k:05d}.npy"
        columns = (spans.a_start, spans.a_end, spans.b_start, spans.b_end, spans.is_random_next)
        np.save(path, np.stack([np.asarray(c, dtype=np.int64) for c in columns]))
        paired.span_files.append(path)
        paired.num_pairs += len(spans)
        lengths = (spans.a_end - spans.a_start) + (spans.b_end - spans.b_start) + 3
        paired.num_tokens += int(lengths.sum())
        paired.num_random_next += int(spans.is_random_next.sum())
        del spans, columns  # before the next pool is paired
    return paired


def _write_split(req: Request, store, paired: _PairedSplit, path: Path) -> dict[str, dict]:
    """Second pass: the rows of every pool, in pool order, into the shards at `path`; returns the
    shards' checksums (file name → sha256 and bytes)."""
    from data_prep.split_writer import SplitWriter, list_table_nbytes, num_shards_for

    num_bytes = list_table_nbytes(paired.num_pairs, paired.num_tokens, (4, 1))
    shards = num_shards_for(paired.num_pairs, num_bytes, req.cfg.num_shards)
    writer = SplitWriter(path, _features(), paired.num_pairs, num_bytes, shards)
    for pool, span_file in zip(paired.pools, paired.span_files, strict=True):
        tokens = store.read_tokens(paired.documents[pool])
        spans = np.load(span_file)
        lo = 0
        while lo < spans.shape[1]:
            hi = lo + writer.rows_to_batch_end(min(ROWS_PER_CHUNK, spans.shape[1] - lo))
            # LOOKAHEAD_ROWS more rows of the pool, not written: see `rows_to_batch_end`.
            chunk = spans[:, lo : hi + LOOKAHEAD_ROWS]
            table = pair_table(tokens, chunk[:4], chunk[4], req.special_ids)
            writer.write(table.slice(0, hi - lo))
            lo = hi
        del tokens, spans
        span_file.unlink()
    writer.close()
    return writer.checksums


def write_prepared(req: Request, store, sources: list[dict[str, Any]], out: Path) -> dict:
    """Split, pair, shuffle and write the prepared directory into `out` (the temporary of
    `atomic_directory`, which the caller renames into place) from the token store `store` of the
    whole corpus (data_prep/token_store.py); `sources` is manifest.json's `sources`. Returns the
    per-split statistics."""
    from data_prep.split_writer import write_dataset_dict_json

    cfg = req.cfg
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    tok_config_file = req.tokenizer_dir / "tokenizer_config.json"
    tok_config = read_json(tok_config_file) if tok_config_file.is_file() else {}
    is_validation = validation_mask(store.num_documents, cfg.validation_fraction, cfg.seed)

    split_stats: dict[str, dict[str, Any]] = {}
    document_tokens = {}
    files: dict[str, dict[str, Any]] = {}
    for name, chosen in zip(SPLITS, (~is_validation, is_validation), strict=True):
        documents = np.flatnonzero(chosen & (store.document_sentences > 0))
        if len(documents) == 0:
            raise UserError(f"the {name} split has no text left after tokenization; add text")
        sentences = store.document_sentences[documents]
        document_tokens[name] = int(store.document_tokens[documents].sum())
        paired = _pair_split(req, store, name, documents, work)
        checksums = _write_split(req, store, paired, out / name)
        files.update({f"{name}/{file}": value for file, value in checksums.items()})
        split_stats[name] = {
            "num_pairs": paired.num_pairs,
            "num_tokens": paired.num_tokens,
            "num_documents": len(documents),
            "random_next_fraction": round(paired.num_random_next / paired.num_pairs, 4),
            "num_single_sentence_documents": int((sentences == 1).sum()),
            "num_sentences": int(sentences.sum()),
            "num_pools": len(paired.pools),
        }
    remove_tree(work)
    write_dataset_dict_json(out, list(SPLITS))
    num_validation = int(is_validation.sum())
    warn_lopsided_split(cfg.validation_fraction, document_tokens, num_validation)
    manifest = {
        "format_version": FORMAT_VERSION,
        "max_seq_length": cfg.max_seq_length,
        "short_seq_prob": cfg.short_seq_prob,
        "dupe_factor": cfg.dupe_factor,
        "seed": cfg.seed,
        "tokenizer": {
            "sha256": req.tokenizer_sha,
            "vocab_size": req.tok.get_vocab_size(),
            "do_lower_case": tok_config.get("do_lower_case"),
            "strip_accents": tok_config.get("strip_accents"),
            "source_dir": str(cfg.tokenizer_dir),
        },
        "special_token_ids": dict(req.special_ids),
        "splits": split_stats,
        "sources": sources,
        "config": req.record,
        "versions": _versions(),
        "files": files,
    }
    shutil.copytree(req.tokenizer_dir, out / "tokenizer")
    write_json(out / MANIFEST, manifest)
    return split_stats


def warn_lopsided_split(
    validation_fraction: float, tokens: dict[str, int], num_validation_documents: int
) -> None:
    """Warn when the validation split got far more of the text than validation_fraction asks: the
    split is by documents, so one huge document drawn for validation takes its whole size there
    (and away from training)."""
    total = tokens["train"] + tokens["validation"]
    share = tokens["validation"] / max(1, total)
    if tokens["validation"] > tokens["train"] or share > 5 * validation_fraction:
        print(
            f"warning: the validation split holds {tokens['validation']:,} of the {total:,} "
            f"tokens ({share:.0%}; validation_fraction={validation_fraction}) in "
            f"{num_validation_documents} document(s), leaving {tokens['train']:,} to train on: "
            "a large document went to validation; split big documents into several (a blank line "
            "starts a new document in .txt files) or change validation_fraction or seed",
            flush=True,
        )


def print_summary(out: Path, num_bytes: int, stats: dict, seconds: float, timing: str) -> None:
    lines = [
        f"prepared {out} in {seconds:.1f} s ({num_bytes / 1e6 / max(seconds, 1e-9):.2f} MB/s of "
        f"text; {timing})"
    ]
    for name, s in stats.items():
        lines.append(
            f"  {name:<10} {s['num_pairs']:>9,} pairs {s['num_tokens']:>12,} tokens "
            f"{s['num_documents']:>7,} docs  random-next {s['random_next_fraction']:.3f}  "
            f"one-sentence docs {s['num_single_sentence_documents']}  pools {s['num_pools']}"
        )
    print("\n".join(lines), flush=True)
