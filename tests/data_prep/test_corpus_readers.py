"""Reading users' corpora: .txt, .jsonl, .parquet, folders and globs; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.config import CorpusConfig
from data_prep.corpus import read_corpus
from pretrain.errors import UserError


def files_cfg(tmp_path: Path, *paths, **kw) -> CorpusConfig:
    return CorpusConfig(
        name="mine",
        kind="files",
        paths=[str(p) for p in paths],
        hf_cache_dir=str(tmp_path / "hf-cache"),
        **kw,
    )


def read(tmp_path: Path, *paths, **kw):
    return read_corpus(files_cfg(tmp_path, *paths, **kw))


def test_txt_blank_lines_separate_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        "First document. It has two sentences.\nA second line.\n"
        "\n   \n"
        "Second document, one line.\n"
        "\n"
        "Third. Mr. Smith came. He left.\n"
    )
    corpus = read(tmp_path, path)
    assert [d.sentences for d in corpus.documents] == [
        ["First document.", "It has two sentences.", "A second line."],
        ["Second document, one line."],
        ["Third.", "Mr. Smith came.", "He left."],
    ]
    assert corpus.num_single_sentence == 1
    assert [d.doc_id for d in corpus.documents] == [f"{path}#0", f"{path}#1", f"{path}#2"]
    assert corpus.sources[0].info()["num_documents"] == 3
    assert corpus.num_bytes == sum(len(s.encode()) for d in corpus.documents for s in d.sentences)


def test_folder_and_glob(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("Bee one. Bee two.\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("Ay one. Ay two.\n")
    (tmp_path / "d" / "notes.md").write_text("ignored")
    by_folder = read(tmp_path, tmp_path / "d")
    by_glob = read(tmp_path, f"{tmp_path}/d/**/*.txt")
    assert [d.sentences[0] for d in by_folder.documents] == ["Bee one.", "Ay one."]
    assert [d.sentences[0] for d in by_glob.documents] == ["Bee one.", "Ay one."]
    assert by_folder.sources[0].sha256 == read(tmp_path, tmp_path / "d").sources[0].sha256


def test_jsonl_one_document_per_row(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [
        {"body": "Row one. Still row one.\nA paragraph line.", "id": 1},
        {"body": "Row two.", "id": 2},
        {"body": None, "id": 3},
        {"body": "", "id": 4},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = read(tmp_path, path, text_column="body")
    assert [d.sentences for d in corpus.documents] == [
        ["Row one.", "Still row one.", "A paragraph line."],
        ["Row two."],
    ]


def test_parquet_one_document_per_row(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["Alpha one. Alpha two.", "Beta."], "n": [1, 2]}), path)
    corpus = read(tmp_path, path)
    assert [d.sentences for d in corpus.documents] == [["Alpha one.", "Alpha two."], ["Beta."]]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_missing_column_lists_columns(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"content": "Some text. More."}) + "\n")
    else:
        pq.write_table(pa.table({"content": ["Some text. More."]}), path)
    with pytest.raises(
        UserError, match=r"no column 'text'.*available columns: \['content'\].*corpus.text_column"
    ):
        read(tmp_path, path)


def test_non_utf8_txt_names_file_and_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"Caf" + b"\xe9 au lait. Fine.\n")
    with pytest.raises(UserError, match=r"latin\.txt: not valid UTF-8 at byte offset 3.*iconv"):
        read(tmp_path, path)


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl: not valid UTF-8 at byte offset 28"):
        read(tmp_path, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n  \n")
    with pytest.raises(UserError, match=r"corpus 'mine' has no text.*empty\.txt"):
        read(tmp_path, path)


def test_empty_jsonl(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UserError, match="has no text"):
        read(tmp_path, path)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"corpus path '.*nope\.txt' does not exist"):
        read(tmp_path, tmp_path / "nope.txt")


def test_glob_without_match(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        read(tmp_path, f"{tmp_path}/*.txt")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "book.pdf"
    path.write_bytes(b"%PDF")
    with pytest.raises(UserError, match=r"unsupported type '\.pdf'"):
        read(tmp_path, path)


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl: could not be read as JSON lines"):
        read(tmp_path, path)


def test_max_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(f"Doc {i}. Second." for i in range(10)))
    assert len(read(tmp_path, path, max_documents=4).documents) == 4
