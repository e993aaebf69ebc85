"""What bert-prep and bert-tokenizer do for later integrity checks and about surprises: shard
checksums in manifest.json, leftovers of killed runs, a lopsided validation split, a vocabulary far
smaller than asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dp_helpers import tokenizer_overrides, write_txt

from data_prep.build import build
from data_prep.config import compose
from data_prep.files import _host, sha256_file
from data_prep.prepared import split_documents
from data_prep.tokenizer import train_tokenizer


def prep_overrides(work: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [f"work_dir={work}", "corpus=files", "corpus.name=english",
            f"corpus.paths=[{corpus}]", f"tokenizer_dir={tokenizer}", "max_seq_length=64",
            "dupe_factor=1", "validation_fraction=0.1", "num_proc=1", *extra]  # fmt: skip


def run(work, corpus, tokenizer, *extra) -> Path:
    return build(compose("prep", prep_overrides(work, corpus, tokenizer, *extra)))


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_manifest_records_every_shard(tmp_path, english_corpus, english_tokenizer):
    out = run(tmp_path, english_corpus, english_tokenizer, "num_shards=2")
    files = json.loads((out / "manifest.json").read_text())["files"]
    shards = sorted(str(p.relative_to(out)) for p in out.glob("*/*.arrow"))
    assert sorted(files) == shards and len(shards) == 4
    for name, entry in files.items():
        assert entry == {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}


def test_sliced_merge_records_the_same_checksums(tmp_path, english_corpus, english_tokenizer):
    single = run(tmp_path / "single", english_corpus, english_tokenizer)
    args = prep_overrides(tmp_path / "sliced", english_corpus, english_tokenizer, "num_slices=2")
    for k in range(2):
        build(compose("prep", [*args, f"slice_index={k}"]))
    merged = build(compose("prep", args))
    files = json.loads((merged / "manifest.json").read_text())["files"]
    assert files and files == json.loads((single / "manifest.json").read_text())["files"]


def test_leftovers_of_dead_processes_are_removed(
    tmp_path, english_corpus, english_tokenizer, dead_pid, capsys
):
    out = run(tmp_path, english_corpus, english_tokenizer)
    host = _host()
    names = {
        "dead_tmp": f".{out.name}.tmp-{dead_pid}-0123abcd-{host}",
        "dead_old_legacy": f".{out.name}.old-{dead_pid}-0123abce",  # a name without a host
        "live_tmp": f".{out.name}.tmp-{os.getpid()}-0123abcf-{host}",
        "other_host": f".{out.name}.tmp-{dead_pid}-0123abd0-elsewhere",
        "other_output": f".english-seq128.tmp-{dead_pid}-0123abd1-{host}",
        "user_dir": f".{out.name}.tmp-notes",
    }
    for name in names.values():
        (out.parent / name).mkdir()
        (out.parent / name / "data.arrow").write_bytes(b"x")
    capsys.readouterr()
    assert run(tmp_path, english_corpus, english_tokenizer) == out
    printed = capsys.readouterr().out
    left = {p.name for p in out.parent.iterdir()}
    assert left == {out.name} | {names[k] for k in names if not k.startswith("dead")}
    line = next(x for x in printed.splitlines() if "interrupted" in x)
    assert names["dead_tmp"] in line and names["dead_old_legacy"] in line
    assert "reusing prepared data" in printed


def test_kill_between_renames_restores_the_previous_output(
    tmp_path, english_corpus, english_tokenizer, dead_pid, capsys
):
    out = run(tmp_path, english_corpus, english_tokenizer)
    manifest = (out / "manifest.json").read_text()
    # Killed after moving the old output aside, before renaming the new one into place.
    out.rename(out.parent / f".{out.name}.old-{dead_pid}-0123abcd-{_host()}")
    (out.parent / f".{out.name}.tmp-{dead_pid}-0123abcd-{_host()}").mkdir()
    capsys.readouterr()
    assert run(tmp_path, english_corpus, english_tokenizer) == out
    printed = capsys.readouterr().out
    assert f"restored {out}" in printed and "reusing prepared data" in printed
    assert (out / "manifest.json").read_text() == manifest
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_tokenizer_leftovers_of_dead_processes_are_removed(tmp_path, english_corpus, dead_pid):
    overrides = tokenizer_overrides(tmp_path, english_corpus, "vocab_size=200")
    path = train_tokenizer(compose("tokenizer", overrides))
    dead = path.parent / f".{path.name}.tmp-{dead_pid}-0123abcd-{_host()}"
    live = path.parent / f".{path.name}.tmp-{os.getpid()}-0123abce-{_host()}"
    dead.mkdir(), live.mkdir()
    assert train_tokenizer(compose("tokenizer", overrides)) == path
    assert not dead.exists() and live.exists()


def test_warns_when_one_big_document_is_the_validation_split(
    tmp_path, english_tokenizer, english_docs, capsys
):
    docs = [doc[:3] for doc in english_docs[:10]]
    _, (val,) = split_documents(len(docs), 0.1, 12345)
    docs[val] = [s for doc in english_docs[10:] for s in doc]  # the rest of the corpus
    corpus = write_txt(tmp_path / "lopsided.txt", docs)
    run(tmp_path, corpus, english_tokenizer)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning:")]
    assert "validation split holds" in line and "validation_fraction=0.1" in line
    assert "in 1 document(s)" in line and "blank line" in line and "seed" in line


def test_no_split_warning_for_a_balanced_corpus(
    tmp_path, english_corpus, english_tokenizer, capsys
):
    run(tmp_path, english_corpus, english_tokenizer)
    assert "warning:" not in capsys.readouterr().out


def test_warns_when_the_vocabulary_is_far_smaller_than_asked(tmp_path, capsys):
    corpus = write_txt(tmp_path / "tiny.txt", [["The quick brown fox jumps over the lazy dog."]])
    overrides = [f"work_dir={tmp_path}", "corpus=files", "corpus.name=tiny",
                 f"corpus.paths=[{corpus}]", "vocab_size=8192"]  # fmt: skip
    train_tokenizer(compose("tokenizer", overrides))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning:")]
    assert "far fewer than vocab_size=8192" in line
    assert "corpus is too small" in line and "add text or lower vocab_size" in line


def test_no_vocabulary_warning_when_the_corpus_suffices(tmp_path, english_corpus, capsys):
    train_tokenizer(compose("tokenizer", tokenizer_overrides(tmp_path, english_corpus)))
    assert "warning:" not in capsys.readouterr().out
