"""Fixtures of the data-prep tests: a small real-English corpus made from Python's own docstrings
(no network), and a tokenizer trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_helpers import stdlib_documents, tokenizer_overrides, write_txt

from data_prep.config import compose
from data_prep.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def english_docs() -> list[list[str]]:
    docs = stdlib_documents()
    assert len(docs) >= 30
    return docs


@pytest.fixture(scope="session")
def english_corpus(tmp_path_factory, english_docs) -> Path:
    """A folder with two .txt files of stdlib-docstring documents."""
    root = tmp_path_factory.mktemp("english")
    half = len(english_docs) // 2
    write_txt(root / "texts" / "a.txt", english_docs[:half])
    write_txt(root / "texts" / "b.txt", english_docs[half:])
    return root / "texts"


@pytest.fixture(scope="session")
def english_tokenizer(tmp_path_factory, english_corpus) -> Path:
    """An uncased WordPiece tokenizer (vocab 800) trained on `english_corpus`."""
    work = tmp_path_factory.mktemp("tok")
    return train_tokenizer(compose("tokenizer", tokenizer_overrides(work, english_corpus)))
