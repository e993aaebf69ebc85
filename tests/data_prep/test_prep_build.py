"""bert-prep end to end on a small local corpus: layout, columns, manifest, reuse, failures."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import pytest
from dp_helpers import write_txt
from tokenizers import Tokenizer

from data_prep import prepared
from data_prep.build import build
from data_prep.config import CorpusConfig, compose
from data_prep.corpus import read_corpus
from data_prep.files import sha256_file
from data_prep.prepared import WORK_DIR, split_documents, validation_mask
from pretrain.errors import UserError


def prep_overrides(work: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [
        f"work_dir={work}",
        "corpus=files",
        "corpus.name=english",
        f"corpus.paths=[{corpus}]",
        f"tokenizer_dir={tokenizer}",
        "max_seq_length=64",
        "dupe_factor=2",
        "validation_fraction=0.1",
        "num_proc=1",
        *extra,
    ]


def run(work, corpus, tokenizer, *extra) -> Path:
    return build(compose("prep", prep_overrides(work, corpus, tokenizer, *extra)))


@pytest.fixture(scope="module")
def built(tmp_path_factory, english_corpus, english_tokenizer) -> Path:
    work = tmp_path_factory.mktemp("prep")
    return run(work, english_corpus, english_tokenizer, "num_proc=2")


def test_layout_columns_and_dtypes(built, english_tokenizer):
    assert built.name == "english-seq64" and built.parent.name == "data"
    names = {p.name for p in built.iterdir()}
    assert names == {"manifest.json", "tokenizer", "train", "validation", "dataset_dict.json"}
    assert (built / "tokenizer" / "tokenizer.json").read_bytes() == (
        english_tokenizer / "tokenizer.json"
    ).read_bytes()
    dd = datasets.load_from_disk(str(built))
    assert set(dd) == {"train", "validation"}
    for split in dd.values():
        assert split.features == datasets.Features(
            {
                "input_ids": datasets.Sequence(datasets.Value("int32")),
                "token_type_ids": datasets.Sequence(datasets.Value("int8")),
                "next_sentence_label": datasets.Value("int8"),
            }
        )
        table = split.data.table
        assert str(table.schema.field("input_ids").type) == "list<item: int32>"
        for row in split.select(range(min(200, len(split)))):
            ids, types = row["input_ids"], row["token_type_ids"]
            assert 5 <= len(ids) <= 64 and len(types) == len(ids)
            assert ids[0] == 2 and ids[-1] == 3 and ids.count(3) == 2 and 0 not in ids
            sep = ids.index(3)
            assert types == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
            assert row["next_sentence_label"] in (0, 1)
    tok = Tokenizer.from_file(str(built / "tokenizer" / "tokenizer.json"))
    text = tok.decode(dd["train"][0]["input_ids"])
    assert len(text.split()) >= 3


def test_manifest(built, english_tokenizer):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["max_seq_length"] == 64 and manifest["dupe_factor"] == 2
    assert manifest["short_seq_prob"] == 0.1 and manifest["seed"] == 12345
    tok = manifest["tokenizer"]
    assert tok["sha256"] == sha256_file(english_tokenizer / "tokenizer.json")
    assert (
        tok["vocab_size"] == 800 and tok["do_lower_case"] is True and tok["strip_accents"] is None
    )
    assert tok["source_dir"] == str(english_tokenizer)
    assert manifest["special_token_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    dd = datasets.load_from_disk(str(built))
    for name in ("train", "validation"):
        split = manifest["splits"][name]
        assert split["num_pairs"] == len(dd[name]) > 0
        lengths = [len(x) for x in dd[name]["input_ids"]]
        assert split["num_tokens"] == sum(lengths)
        labels = np.array(dd[name]["next_sentence_label"])
        assert split["random_next_fraction"] == pytest.approx(labels.mean(), abs=1e-4)
        assert split["num_documents"] >= 1
    assert manifest["splits"]["validation"]["num_documents"] == round(
        0.1
        * (
            manifest["splits"]["train"]["num_documents"]
            + manifest["splits"]["validation"]["num_documents"]
        )
    )
    (source,) = manifest["sources"]
    assert source["kind"] == "files" and len(source["sha256"]) == 64
    assert source["num_documents"] == sum(
        manifest["splits"][s]["num_documents"] for s in ("train", "validation")
    )
    assert manifest["config"]["max_seq_length"] == 64
    assert manifest["config"]["corpus"]["paths"] == [source["name"]]
    assert set(manifest["versions"]) >= {"python", "datasets", "tokenizers"}


def test_validation_documents_disjoint_from_train(built, english_corpus, english_tokenizer):
    assert_pairs_from_own_split(built, english_corpus, english_tokenizer)


def assert_pairs_from_own_split(out: Path, english_corpus: Path, english_tokenizer: Path) -> None:
    """Every pair's A and B come from documents of the pair's split (checked by 6-grams)."""
    corpus = read_corpus(CorpusConfig(name="x", kind="files", paths=[str(english_corpus)]))
    train_idx, val_idx = split_documents(len(corpus.documents), 0.1, 12345)
    assert not set(train_idx) & set(val_idx)
    assert len(train_idx) + len(val_idx) == len(corpus.documents)
    tok = Tokenizer.from_file(str(english_tokenizer / "tokenizer.json"))
    owners = defaultdict(set)  # 6-gram of token ids -> documents containing it
    for index, doc in enumerate(corpus.documents):
        ids = tok.encode(" ".join(doc.sentences), add_special_tokens=False).ids
        for k in range(len(ids) - 5):
            owners[tuple(ids[k : k + 6])].add(index)
    dd = datasets.load_from_disk(str(out))
    for split, allowed in (("train", set(train_idx)), ("validation", set(val_idx))):
        checked = 0
        for ids in dd[split]["input_ids"]:
            sep = ids.index(3)
            for segment in (ids[1:sep], ids[sep + 1 : -1]):
                if len(segment) >= 6:
                    assert owners[tuple(segment[:6])] & allowed, split
                    checked += 1
        assert checked > 0.8 * len(dd[split])


def test_reuse_second_run(built, english_corpus, english_tokenizer, capsys):
    stamp = (built / "manifest.json").stat().st_mtime_ns
    work = built.parents[1]
    assert run(work, english_corpus, english_tokenizer, "num_proc=2") == built
    assert "reusing prepared data" in capsys.readouterr().out
    assert (built / "manifest.json").stat().st_mtime_ns == stamp
    # num_proc does not change the output, so it does not prevent reuse either
    assert run(work, english_corpus, english_tokenizer, "num_proc=1") == built
    with pytest.raises(UserError, match=r"another config \(differs in: dupe_factor\).*force=true"):
        run(work, english_corpus, english_tokenizer, "dupe_factor=3")
    # Fields of other corpus kinds do not matter to a files corpus; its own do.
    assert run(work, english_corpus, english_tokenizer, "corpus.tasks=[wnut16]") == built
    with pytest.raises(UserError, match=r"differs in: corpus.text_column"):
        run(work, english_corpus, english_tokenizer, "corpus.text_column=body")


def test_tokenizer_mismatch(built, english_corpus, tmp_path):
    other = tmp_path / "other-tok"
    other.mkdir()
    for f in (built / "tokenizer").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    data = json.loads((other / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(data))
    work = built.parents[1]
    with pytest.raises(UserError) as err:
        run(work, english_corpus, other)
    message = str(err.value)
    assert str(built) in message and str(other) in message
    assert "force=true" in message and "different output_dir" in message


def test_manifest_from_before_pool_tokens_is_reused(
    built, tmp_path, english_corpus, english_tokenizer
):
    """Builds made before `pool_tokens` existed paired each split as one pool, as the default
    does for a corpus this size: they are reused, not refused as another config."""
    old = tmp_path / "data" / built.name
    shutil.copytree(built, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["config"]["pool_tokens"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert run(tmp_path, english_corpus, english_tokenizer) == old
    assert "pool_tokens" not in json.loads((old / "manifest.json").read_text())["config"]


def test_pools(built, english_corpus, english_tokenizer, tmp_path):
    """A split larger than pool_tokens is paired in pools: the same data for any num_proc, every
    pair's A and B from the split's own documents, the work files gone."""
    one = run(tmp_path / "one", english_corpus, english_tokenizer, "pool_tokens=4000")
    two = run(tmp_path / "two", english_corpus, english_tokenizer, "pool_tokens=4000", "num_proc=2")
    splits = json.loads((one / "manifest.json").read_text())["splits"]
    assert splits["train"]["num_pools"] >= 5 and splits["validation"]["num_pools"] >= 1
    assert json.loads((built / "manifest.json").read_text())["splits"]["train"]["num_pools"] == 1
    a, b = datasets.load_from_disk(str(one)), datasets.load_from_disk(str(two))
    for split in ("train", "validation"):
        assert a[split].data.table.equals(b[split].data.table)
        assert len(a[split]) == splits[split]["num_pairs"]
    assert not (one / WORK_DIR).exists()
    assert_pairs_from_own_split(one, english_corpus, english_tokenizer)
    whole = datasets.load_from_disk(str(built))
    # Pools change the random B's, not the statistics (within sampling noise of ~2,000 pairs).
    labels = np.array(a["train"]["next_sentence_label"])
    assert abs(labels.mean() - np.mean(whole["train"]["next_sentence_label"])) < 0.05


def test_num_proc_1_and_2_identical(built, english_corpus, english_tokenizer, tmp_path):
    again = run(tmp_path, english_corpus, english_tokenizer, "num_proc=1")
    a, b = datasets.load_from_disk(str(built)), datasets.load_from_disk(str(again))
    for split in ("train", "validation"):
        assert a[split].data.table.equals(b[split].data.table)
    ma = json.loads((built / "manifest.json").read_text())
    mb = json.loads((again / "manifest.json").read_text())
    assert ma["splits"] == mb["splits"]


def test_seed_changes_pairs(built, english_corpus, english_tokenizer, tmp_path):
    other = run(tmp_path, english_corpus, english_tokenizer, "seed=1")
    a, b = datasets.load_from_disk(str(built)), datasets.load_from_disk(str(other))
    assert a["train"]["input_ids"][:20] != b["train"]["input_ids"][:20]


def test_failing_build_leaves_nothing(tmp_path, english_corpus, english_tokenizer, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepared.shutil, "copytree", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(tmp_path, english_corpus, english_tokenizer)
    assert list((tmp_path / "data").iterdir()) == []


def test_force_rebuild_replaces(tmp_path, english_corpus, english_tokenizer):
    first = run(tmp_path, english_corpus, english_tokenizer, "dupe_factor=1")
    again = run(tmp_path, english_corpus, english_tokenizer, "dupe_factor=3", "force=true")
    assert again == first
    assert json.loads((again / "manifest.json").read_text())["dupe_factor"] == 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [first.name]


def test_missing_tokenizer_dir(tmp_path, english_corpus):
    with pytest.raises(UserError, match=r"tokenizer dir .*nope does not exist.*bert-tokenizer"):
        run(tmp_path, english_corpus, tmp_path / "nope")


def test_no_multi_sentence_document(tmp_path, english_tokenizer):
    corpus = write_txt(
        tmp_path / "one.txt", [["Only one sentence here."], ["And another lonely one."]]
    )
    with pytest.raises(UserError, match=r"no document .* has 2 or more sentences"):
        run(tmp_path, corpus, english_tokenizer)


def test_too_few_documents(tmp_path, english_tokenizer):
    corpus = write_txt(tmp_path / "one.txt", [["One sentence.", "Two sentences."]])
    with pytest.raises(UserError, match="needs at least 2"):
        run(tmp_path, corpus, english_tokenizer)


def test_single_sentence_documents_are_counted(tmp_path, english_tokenizer, english_docs):
    docs = [*english_docs[:20], ["A lone sentence."], ["Another lone one."]]
    corpus = write_txt(tmp_path / "mixed.txt", docs)
    out = run(tmp_path, corpus, english_tokenizer, "validation_fraction=0.05")
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert sum(s["num_single_sentence_documents"] for s in splits.values()) == 2


def test_split_documents():
    for n, fraction, seed in ((100, 0.05, 1), (1000, 0.1, 12345), (2, 0.5, 3)):
        # The split of the earlier list-based shuffle, kept by the array-based one.
        num_val = min(n - 1, max(1, round(n * fraction)))
        order = list(range(n))
        random.Random(f"{seed}/split").shuffle(order)
        assert np.flatnonzero(validation_mask(n, fraction, seed)).tolist() == sorted(
            order[:num_val]
        )
    train, val = split_documents(100, 0.05, seed=1)
    assert len(val) == 5 and len(train) == 95 and not set(train) & set(val)
    assert split_documents(100, 0.05, seed=1) == (train, val) != split_documents(100, 0.05, seed=2)
    assert split_documents(2, 0.01, seed=1)[1] != []
    assert len(split_documents(3, 0.9, seed=1)[0]) == 1
