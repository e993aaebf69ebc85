"""The token store: streamed tokenization into part files, and reading documents back from one part
or from slices' parts (every N-th document each)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from data_prep import token_store
from data_prep.token_store import TokenStore, tokenize_to_part


@pytest.fixture(scope="module")
def documents(english_docs) -> list[list[str]]:
    # A document whose text tokenizes to nothing (zero-width and control characters) keeps its
    # number but has no sentences; one sentence of another document tokenizes to nothing too.
    docs = [list(d[:12]) for d in english_docs[:20]]
    docs[3] = ["\u200b", "\x00"]
    docs[5].insert(1, "\u200b")
    return docs


def expected_ids(tokenizer_dir, documents) -> list[list[list[int]]]:
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    out = []
    for doc in documents:
        ids = [tok.encode(s, add_special_tokens=False).ids for s in doc]
        out.append([x for x in ids if x])
    return out


def as_lists(docs) -> list[list[list[int]]]:
    out = []
    for d in range(docs.num_documents):
        lo, hi = docs.document_offsets[d], docs.document_offsets[d + 1]
        out.append(
            [
                docs.tokens[docs.sentence_offsets[s] : docs.sentence_offsets[s + 1]].tolist()
                for s in range(lo, hi)
            ]
        )
    return out


@pytest.mark.parametrize("num_proc", [1, 2])
def test_tokenize_and_read_back(tmp_path, documents, english_tokenizer, monkeypatch, num_proc):
    monkeypatch.setattr(token_store, "TASK_CHARS", 2_000)  # several tasks in flight
    writer = tokenize_to_part(
        iter(documents), english_tokenizer / "tokenizer.json", num_proc, tmp_path / "part"
    )
    expected = expected_ids(english_tokenizer, documents)
    assert writer.num_documents == len(documents)
    assert writer.num_tokens == sum(len(s) for d in expected for s in d)
    store = TokenStore([tmp_path / "part"])
    assert store.document_sentences.tolist() == [len(d) for d in expected]
    assert store.document_sentences[3] == 0
    assert store.document_tokens.tolist() == [sum(map(len, d)) for d in expected]
    chosen = np.array([0, 1, 2, 4, 7, 8, 19])
    assert as_lists(store.read(chosen)) == [expected[k] for k in chosen]
    assert store.read_tokens(chosen).tolist() == [t for k in chosen for s in expected[k] for t in s]


def test_slices_parts_read_as_one_corpus(tmp_path, documents, english_tokenizer):
    tokenizer = english_tokenizer / "tokenizer.json"
    tokenize_to_part(iter(documents), tokenizer, 1, tmp_path / "whole")
    parts = [tmp_path / f"slice{k}" for k in range(3)]
    for k, part in enumerate(parts):  # slice k holds documents k, k+3, k+6, ...
        tokenize_to_part(iter(documents[k::3]), tokenizer, 1, part)
    whole, sliced = TokenStore([tmp_path / "whole"]), TokenStore(parts)
    assert sliced.num_documents == whole.num_documents == len(documents)
    assert np.array_equal(sliced.document_tokens, whole.document_tokens)
    for chosen in ([0, 1, 2, 4, 5, 6, 7, 19], list(range(20)), [3], []):
        a, b = whole.read(np.array(chosen, dtype=np.int64)), sliced.read(np.array(chosen))
        for name in ("tokens", "sentence_offsets", "document_offsets"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (chosen, name)
    with pytest.raises(ValueError, match="holds 6 documents; documents 0, 2, … of 13 are 7"):
        TokenStore([parts[2], parts[0]])
