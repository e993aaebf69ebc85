"""Helpers of the data-prep tests: a small real-English corpus made from Python's own docstrings
(no network needed)."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) from a checkout
    sys.path.insert(0, str(REPO))


STDLIB_MODULES = [
    "argparse",
    "collections",
    "json",
    "csv",
    "logging",
    "pathlib",
    "subprocess",
    "threading",
    "email.message",
    "urllib.parse",
    "random",
    "statistics",
    "decimal",
    "fractions",
    "textwrap",
    "string",
    "re",
    "shutil",
    "tempfile",
    "datetime",
    "calendar",
    "heapq",
    "bisect",
    "functools",
    "itertools",
    "operator",
    "inspect",
    "pickle",
    "copy",
    "pprint",
    "difflib",
    "unittest",
    "zipfile",
    "tarfile",
    "gzip",
    "socket",
    "typing",
    "dataclasses",
    "enum",
    "contextlib",
    "abc",
    "io",
    "struct",
    "codecs",
    "locale",
    "gettext",
    "sqlite3",
    "queue",
    "sched",
    "selectors",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "base64",
    "binascii",
]


def _paragraphs(doc: str | None) -> list[str]:
    """Prose paragraphs of a docstring, each joined onto one line (code examples dropped)."""
    if not doc:
        return []
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.startswith((">>>", "...")) for ln in lines):
            continue
        text = " ".join(lines)
        if len(text) >= 20 and sum(ch.isalpha() for ch in text) > 0.6 * len(text):
            out.append(text)
    return out


def stdlib_documents() -> list[list[str]]:
    """One document per stdlib module: paragraphs of its docstrings (module, classes, functions)."""
    docs = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        paragraphs = _paragraphs(inspect.getdoc(module))
        for _, member in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            if (inspect.isclass(member) or inspect.isfunction(member)) and getattr(
                member, "__module__", None
            ) == module.__name__:
                paragraphs.extend(_paragraphs(inspect.getdoc(member)))
        if len(paragraphs) >= 2:
            docs.append(paragraphs[:60])
    return docs


def write_txt(path: Path, documents: list[list[str]]) -> Path:
    """Write documents as lines, a blank line between documents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return path


def tokenizer_overrides(work: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        f"work_dir={work}",
        "corpus=files",
        "corpus.name=english",
        f"corpus.paths=[{corpus}]",
        "vocab_size=800",
        *extra,
    ]


# Fields of manifest.json that say where and how a build ran, not what it made (the tests' builds
# run in different work_dirs; the corpus caches follow work_dir).
RUN_FIELDS = {f"config.{key}" for key in
              ("work_dir", "output_dir", "num_proc", "num_slices", "slices_dir")} | {
              "config.corpus.cache_dir", "config.corpus.hf_cache_dir"}  # fmt: skip


def assert_same_prepared(a: Path, b: Path) -> None:
    """Two bert-prep directories hold the same data: the same pairs in the same order, the same
    tokenizer copy, the same manifest apart from RUN_FIELDS."""
    import json

    import datasets

    from data_prep.tokenizer import diff_keys

    da, db = datasets.load_from_disk(str(a)), datasets.load_from_disk(str(b))
    assert set(da) == set(db) == {"train", "validation"}
    for split in da:
        assert len(da[split]) > 0
        assert da[split].data.table.equals(db[split].data.table), split
    assert (a / "tokenizer" / "tokenizer.json").read_bytes() == (
        b / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert set(diff_keys(ma, mb)) <= RUN_FIELDS, diff_keys(ma, mb)
