"""What a whole `bert-prep` build and a sliced one (data_prep/slices.py) share: the request (config,
tokenizer and opened corpus), tokenization of documents to ids, and writing the prepared directory
from the ids (split, pairs, shuffle, Arrow shards, manifest.json with shard checksums).

`data_prep/build.py` (the app) imports `data_prep/slices.py`, and both import this module, which
imports neither, so the imports have no cycle. The same code writes the output whether the ids were
tokenized in one process or merged from slices, which is what makes the two outputs equal.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.config import PrepAppConfig, as_dict, corpus_identity
from data_prep.files import atomic_directory, read_json, sha256_file, write_json
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


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a recorded config that determines the output (compared to reuse a directory)."""
    data = {k: v for k, v in config.items() if k not in _NOT_RECORDED}
    if isinstance(data.get("corpus"), dict):
        data["corpus"] = corpus_identity(data["corpus"])
    return data


def split_documents(
    num_documents: int, validation_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split of document indices into (train, validation), each sorted, each non-empty."""
    if num_documents < 2:
        raise UserError(
            f"the corpus has {num_documents} document(s); bert-prep needs at least 2 (one for "
            "validation); add text or separate documents with blank lines in .txt files"
        )
    num_val = min(num_documents - 1, max(1, round(num_documents * validation_fraction)))
    order = list(range(num_documents))
    random.Random(f"{seed}/split").shuffle(order)
    return sorted(order[num_val:]), sorted(order[:num_val])


class _Encoder:
    """`datasets.map` function: documents' sentences → token ids (no special tokens), empty dropped."""

    def __init__(self, tokenizer_file: str) -> None:
        self.tokenizer_file = tokenizer_file
        self._tok = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_file": self.tokenizer_file, "_tok": None}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(self.tokenizer_file)
            self._tok.no_truncation()
            self._tok.no_padding()
        sizes = [len(doc) for doc in batch["sentences"]]
        flat = [s for doc in batch["sentences"] for s in doc]
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        ids = [e.ids for e in encode(flat, add_special_tokens=False)]
        out, k = [], 0
        for size in sizes:
            out.append([x for x in ids[k : k + size] if x])
            k += size
        return {"ids": out}


def tokenize_documents(sentences: list[list[str]], tokenizer_file: Path, num_proc: int):
    """Token ids of every document: an Arrow `list<list<int32>>` array (documents → sentences)."""
    import datasets

    ds = datasets.Dataset.from_dict({"sentences": sentences})
    batch = max(1, min(256, -(-len(sentences) // max(1, num_proc))))
    features = datasets.Features({"ids": datasets.List(datasets.List(datasets.Value("int32")))})
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        out = ds.map(
            _Encoder(str(tokenizer_file)),
            batched=True,
            batch_size=batch,
            num_proc=num_proc if num_proc > 1 and len(sentences) > 1 else None,
            remove_columns=["sentences"],
            features=features,
            desc="tokenize",
        )
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    column = out.data.table.column("ids")
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def to_documents(ids, indices: list[int]):
    """`TokenizedDocuments` of the documents `indices` of a `list<list<int32>>` array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from data_prep.pairs import TokenizedDocuments

    chosen = ids.take(pa.array(indices, type=pa.int64()))
    counts = pc.list_value_length(chosen).to_numpy(zero_copy_only=False).astype(np.int64)
    sentences = chosen.flatten()
    lengths = pc.list_value_length(sentences).to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = sentences.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    counts = counts[counts > 0]
    return TokenizedDocuments(
        tokens=tokens,
        sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        document_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )


def pairs_dataset(docs, spans, special_ids: dict[str, int]):
    """A `datasets.Dataset` with the columns of docs/ARCHITECTURE.md; `special_ids` as in the
    manifest (`special_token_ids`)."""
    import datasets
    import pyarrow as pa

    from data_prep.pairs import pair_columns

    ids, types, offsets, labels = pair_columns(
        docs.tokens, spans, special_ids["cls"], special_ids["sep"]
    )
    offsets32 = pa.array(offsets.astype(np.int32) if offsets[-1] < 2**31 else offsets)
    list_type = pa.ListArray if offsets32.type == pa.int32() else pa.LargeListArray
    table = pa.table(
        {
            "input_ids": list_type.from_arrays(offsets32, pa.array(ids, type=pa.int32())),
            "token_type_ids": list_type.from_arrays(offsets32, pa.array(types, type=pa.int8())),
            "next_sentence_label": pa.array(labels, type=pa.int8()),
        }
    )
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "token_type_ids": datasets.List(datasets.Value("int8")),
            "next_sentence_label": datasets.Value("int8"),
        }
    )
    return datasets.Dataset(
        datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features)
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
    split_documents(num_documents, cfg.validation_fraction, cfg.seed)


def write_prepared(req: Request, ids, sources: list[dict[str, Any]]) -> tuple[dict, float]:
    """Split, pair, shuffle and write the prepared directory from the token ids of every document
    of the corpus (`tokenize_documents`' `list<list<int32>>` array, in corpus order); `sources` is
    manifest.json's `sources`. Returns the per-split statistics and the seconds it took."""
    import datasets

    from data_prep.pairs import make_pair_spans

    start = time.perf_counter()
    cfg = req.cfg
    out = Path(cfg.output_dir)
    tok_config_file = req.tokenizer_dir / "tokenizer_config.json"
    tok_config = read_json(tok_config_file) if tok_config_file.is_file() else {}
    train_idx, val_idx = split_documents(len(ids), cfg.validation_fraction, cfg.seed)

    split_stats: dict[str, dict[str, Any]] = {}
    splits = {}
    document_tokens = {}
    for name, indices in zip(SPLITS, (train_idx, val_idx), strict=True):
        docs = to_documents(ids, indices)
        if docs.num_documents == 0:
            raise UserError(f"the {name} split has no text left after tokenization; add text")
        document_tokens[name] = int(docs.tokens.size)
        spans = make_pair_spans(
            docs,
            max_seq_length=cfg.max_seq_length,
            short_seq_prob=cfg.short_seq_prob,
            dupe_factor=cfg.dupe_factor,
            seed=cfg.seed,
            salt=name,
            num_proc=req.num_proc,
        )
        splits[name] = pairs_dataset(docs, spans, req.special_ids)
        lengths = (spans.a_end - spans.a_start) + (spans.b_end - spans.b_start) + 3
        split_stats[name] = {
            "num_pairs": len(spans),
            "num_tokens": int(lengths.sum()),
            "num_documents": docs.num_documents,
            "random_next_fraction": round(float(spans.is_random_next.mean()), 4)
            if len(spans)
            else 0.0,
            "num_single_sentence_documents": int((docs.sentences_per_document() == 1).sum()),
            "num_sentences": docs.num_sentences,
        }
    warn_lopsided_split(cfg.validation_fraction, document_tokens, len(val_idx))
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
    }
    with atomic_directory(out) as tmp:
        dd = datasets.DatasetDict(splits)
        num_shards = None
        if cfg.num_shards is not None:
            num_shards = {k: max(1, min(cfg.num_shards, len(v))) for k, v in dd.items()}
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dd.save_to_disk(str(tmp), num_shards=num_shards)
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        shutil.copytree(req.tokenizer_dir, tmp / "tokenizer")
        manifest["files"] = shard_checksums(tmp)
        write_json(tmp / MANIFEST, manifest)
    return split_stats, time.perf_counter() - start


def shard_checksums(out: Path) -> dict[str, dict[str, Any]]:
    """manifest.json's `files`: size and sha256 of every Arrow shard of the splits, keyed by path
    relative to the prepared directory (`train/data-00000-of-00001.arrow`); `bert-pretrain` checks
    them before training (pretrain/data_verify.py). Only the shards: the splits' `state.json`
    holds a random fingerprint, so recording it would make equal builds differ."""
    return {
        f"{split}/{path.name}": {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for split in SPLITS
        for path in sorted((out / split).glob("*.arrow"))
    }


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
            f"one-sentence docs {s['num_single_sentence_documents']}"
        )
    print("\n".join(lines), flush=True)
