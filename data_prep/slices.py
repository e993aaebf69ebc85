"""Sliced `bert-prep` (slurm/prep.sbatch): tokenize slices of the corpus in separate processes, then
merge them into the one prepared directory a single-process build writes.

Tokenization is most of bert-prep's work and is per sentence, so the ids of a document do not
depend on which process computes them. Slice k of N (`num_slices=N slice_index=k`) reads the
corpus (every task numbers the documents the same way) one document at a time and tokenizes
documents k, k+N, k+2N, … into its token store part (data_prep/token_store.py) in
`<slices_dir>/slice-0000k-of-0000N/` (beside `slice.json`); taking every N-th document needs no
count of the documents before reading, and balances the slices. The merge (`num_slices=N`, no
`slice_index`) reads the N parts as one store, document i being document i // N of part i % N, so
it sees exactly the store a single build writes, and runs the same split/pairs/shuffle/write code
(`prepared.write_prepared`) on it: the output equals `bert-prep` without slices, pair for pair,
and only manifest.json's `config.num_slices` / `config.slices_dir` tell them apart. Pair making
stays in the merge because a "random next" segment may come from any document of its pool, which
spans the whole split (it uses `num_proc` workers). Like a build, the merge keeps no tokens in
memory beyond one pool's (data_prep/prepared.py).

Slices, like the output, appear complete or not at all (`atomic_directory`) and are reused when a
task runs again with the same config, tokenizer and corpus (a requeued or resubmitted array job
redoes only what is missing); a slice task finds nothing to do once the merged output exists. The
merge removes `slices_dir` when the output is in place. Like a single build, the merge records the
size and sha256 of every Arrow shard in manifest.json's `files`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data_prep.config import PrepAppConfig
from data_prep.files import atomic_directory, clean_leftovers, read_json, remove_tree, write_json
from data_prep.prepared import (
    Request,
    check_pairable,
    comparable_config,
    print_summary,
    tokenize_corpus,
    write_prepared,
)
from data_prep.token_store import TOKENS
from pretrain.errors import UserError

# 2: token store parts (data_prep/token_store.py) of every N-th document; 1 held a contiguous
# range of documents as one Arrow list<list<int32>> array (ids.arrow).
FORMAT_VERSION = 2
SLICE_INFO = "slice.json"


def slices_dir(cfg: PrepAppConfig) -> Path:
    return Path(cfg.slices_dir or f"{cfg.output_dir}.slices")


def slice_dir(cfg: PrepAppConfig, index: int) -> Path:
    assert cfg.num_slices is not None
    return slices_dir(cfg) / f"slice-{index:05d}-of-{cfg.num_slices:05d}"


def slice_documents(num_documents: int, num_slices: int, index: int) -> range:
    """Corpus numbers of the documents slice `index` tokenizes: every `num_slices`-th from `index`
    (sizes differ by at most one)."""
    return range(index, num_documents, num_slices)


def _identity(req: Request) -> dict[str, Any]:
    """What a slice must share with the merge that uses it."""
    return {
        "format_version": FORMAT_VERSION,
        "num_slices": req.cfg.num_slices,
        "tokenizer_sha256": req.tokenizer_sha,
        "source_keys": req.source_keys,
        "config": comparable_config(req.record),
    }


def _slice_matches(path: Path, req: Request, index: int) -> bool:
    info_file = path / SLICE_INFO
    if not (info_file.is_file() and (path / TOKENS).is_file()):
        return False
    info = read_json(info_file)
    return info.get("slice_index") == index and info.get("identity") == _identity(req)


def build_slice(cfg: PrepAppConfig) -> Path:
    """Tokenize slice `cfg.slice_index` of `cfg.num_slices` into its folder (or reuse it); return
    the folder, or the output directory when it is already finished."""
    assert cfg.num_slices is not None and cfg.slice_index is not None
    req = Request.open(cfg)
    if req.finished():  # merged already (e.g. a requeued task): nothing left to do
        return Path(cfg.output_dir)
    index, path = cfg.slice_index, slice_dir(cfg, cfg.slice_index)
    clean_leftovers(path)
    if not cfg.force and _slice_matches(path, req, index):
        print(f"reusing slice {path} (same config, tokenizer and corpus)", flush=True)
        return path
    with atomic_directory(path) as tmp:
        counts = tokenize_corpus(req, tmp, cfg.num_slices, index)
        info = {
            "slice_index": index,
            "num_documents": counts.num_documents,
            "num_slice_documents": counts.num_tokenized,
            "num_multi_sentence_documents": counts.num_multi_sentence,
            "num_bytes": counts.num_bytes,
            "sources": counts.sources,
            "identity": _identity(req),
        }
        write_json(tmp / SLICE_INFO, info)
    seconds = time.perf_counter() - req.start
    print(
        f"slice {index + 1}/{cfg.num_slices}: documents {index}, {index + cfg.num_slices}, … "
        f"({counts.num_tokenized} of {counts.num_documents}) read and tokenized in "
        f"{seconds:.1f} s -> {path}",
        flush=True,
    )
    return path


def merge_slices(cfg: PrepAppConfig) -> Path:
    """Write the prepared directory from the `cfg.num_slices` finished slices (or reuse a finished
    one); the same directory `bert-prep` without slices writes."""
    from data_prep.token_store import TokenStore

    assert cfg.num_slices is not None
    req = Request.open(cfg)
    out = Path(cfg.output_dir)
    if req.finished():  # e.g. a merge requeued after the output was in place
        remove_tree(slices_dir(cfg))
        return out
    paths = [slice_dir(cfg, k) for k in range(cfg.num_slices)]
    missing = [k for k, path in enumerate(paths) if not _slice_matches(path, req, k)]
    if missing:
        raise UserError(
            f"{len(missing)} of {cfg.num_slices} slices are missing in {slices_dir(cfg)} or were "
            f"made with another config, tokenizer or corpus (slice_index {_ranges(missing)}); "
            "run them first (`bert-prep num_slices=... slice_index=k` with the same overrides, or "
            "resubmit the array job: finished slices are reused)"
        )
    infos = [read_json(path / SLICE_INFO) for path in paths]
    num_documents = infos[0]["num_documents"]
    if any(
        i["num_documents"] != num_documents
        or i["num_slice_documents"] != len(slice_documents(num_documents, cfg.num_slices, k))
        for k, i in enumerate(infos)
    ):
        raise UserError(
            f"the slices in {slices_dir(cfg)} disagree on the corpus's documents; remove that "
            "folder and run the slices again"
        )
    check_pairable(cfg, num_documents, sum(i["num_multi_sentence_documents"] for i in infos))
    store = TokenStore(paths)
    read_s = time.perf_counter() - req.start
    with atomic_directory(out) as tmp:
        stats = write_prepared(req, store, infos[0]["sources"], tmp)
    remove_tree(slices_dir(cfg))
    seconds = time.perf_counter() - req.start
    timing = f"merged {cfg.num_slices} slices: read {read_s:.1f} s, pairs + write {seconds - read_s:.1f} s"
    print_summary(out, sum(i["num_bytes"] for i in infos), stats, seconds, timing)
    return out


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for k, value in enumerate(indices):
        if start is None:
            start = value
        if k + 1 == len(indices) or indices[k + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)
