"""The unit every reader yields: a document as a list of sentences, and where it came from."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.errors import UserError


@dataclass
class Document:
    """One document: consecutive sentences, in order (NSP pairs never cross documents)."""

    doc_id: str
    source: str
    sentences: list[str]


@dataclass
class Source:
    """One input of a corpus (a demo package, a configured path, a hub dataset)."""

    name: str
    kind: str
    sha256: str
    """Hash of the input bytes (or the `datasets` fingerprint for a hub dataset)."""
    read: Callable[[], Iterator[Document]] = field(repr=False)
    detail: dict[str, Any] = field(default_factory=dict)
    num_documents: int = 0
    """Filled in while reading."""

    def info(self) -> dict[str, Any]:
        """The `sources` entry of manifest.json."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_documents": self.num_documents,
            "sha256": self.sha256,
            **self.detail,
        }


def decode_utf8(data: bytes, path: str | Path) -> str:
    """Decode UTF-8 (a leading BOM is dropped); a bad byte is a `UserError` naming file and offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, err.start) from None
    return text.removeprefix("\ufeff")


def check_utf8_file(path: str | Path) -> None:
    """Check that a possibly large file is valid UTF-8, reading it in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # file offset of the first byte the decoder has not consumed yet
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise _utf8_error(path, offset - pending + err.start) from None
            if not chunk:
                return
            offset += len(chunk)


def _utf8_error(path: str | Path, offset: int) -> UserError:
    path = Path(path)
    return UserError(
        f"{path}: not valid UTF-8 at byte offset {offset}; re-encode the file, e.g. "
        f"`iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`"
    )
