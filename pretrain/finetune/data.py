"""Labelled examples for fine-tuning: reading, checking, tokenizing, label alignment, batching.

Records inside the framework are plain dicts:

- sequence classification: `{"text": str, "text_pair": str (optional), "label": str}`;
- token classification: `{"tokens": [str], "tags": [str]}` (BIO tags, one per word).

For token classification each word's label goes to its first WordPiece; the other pieces and the
special tokens get −100 (ignored by the loss), and a word's prediction is read from its first piece.
Words cut off by `max_seq_length` are predicted `O` (and so still count in the entity metrics).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pretrain.errors import UserError

IGNORE = -100
SEQUENCE = "sequence_classification"
TOKEN = "token_classification"
TASK_TYPES = (SEQUENCE, TOKEN)
FILE_FORMATS = (".csv", ".jsonl", ".json", ".parquet")


# --------------------------------------------------------------------------- reading


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a local .csv, .jsonl (or JSON-lines .json) or .parquet file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist; check the task's train/dev/test paths")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(p, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise UserError(f"{p} line {number}: not JSON ({err})") from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    raise UserError(f"{p}: unsupported file type {suffix!r}; use one of {FILE_FORMATS}")


def read_hf_split(dataset: str, config: str | None, split: str) -> list[dict]:
    """Rows of a Hugging Face `datasets` split (online users); ClassLabel ids become names."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # network, unknown name, unknown split: all user-facing
        raise UserError(
            f"cannot load datasets {dataset!r} (config {config}, split {split}): {err}"
        ) from None
    names = {}
    for col, feature in ds.features.items():
        inner = getattr(feature, "feature", feature)
        if isinstance(inner, datasets.ClassLabel):
            names[col] = inner.names
    rows = ds.to_list()
    for row in rows:
        for col, labels in names.items():
            value = row[col]
            row[col] = [labels[v] for v in value] if isinstance(value, list) else labels[value]
    return rows


def _column(row: dict, column: str, origin: str, role: str) -> object:
    if column not in row:
        raise UserError(
            f"{origin}: no {role} column {column!r}; its columns are {sorted(row)} "
            f"(set task.{role}_column)"
        )
    return row[column]


_NUMBER = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def label_text(value: object) -> str:
    """A label as the label set holds it: stripped text, with integral numbers written as
    integers. The same class arrives as 1 from one file and as 1.0 or "1.0" from another (a
    float column in JSONL or Parquet, a CSV written by pandas); unequal strings would make them
    two labels, or "unknown" ones."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if _NUMBER.fullmatch(text) and not _INTEGER.fullmatch(text) and float(text).is_integer():
        return str(int(float(text)))
    return text


def _is_real_number(label: str) -> bool:
    return bool(_NUMBER.fullmatch(label)) and not _INTEGER.fullmatch(label)


def sequence_records(
    rows: list[dict], text_column: str, label_column: str, pair_column: str | None, origin: str
) -> list[dict]:
    out = []
    for row in rows:
        text = _column(row, text_column, origin, "text")
        label = _column(row, label_column, origin, "label")
        if text is None or label is None or str(label).strip() == "":
            continue
        rec = {"text": str(text), "label": label_text(label)}
        if pair_column is not None:
            rec["text_pair"] = str(_column(row, pair_column, origin, "text_pair") or "")
        out.append(rec)
    if not out:
        raise UserError(f"{origin}: no labelled rows")
    # Numbers with fractions (after `label_text`, integral ones have none) are scores, not
    # classes: each distinct value would become a class of its own.
    real = [r["label"] for r in out if _is_real_number(r["label"])]
    if real and all(_NUMBER.fullmatch(r["label"]) for r in out):
        raise UserError(
            f"{origin} column {label_column}: labels look like real numbers (e.g. {real[0]}); "
            "bert-finetune classifies into discrete labels — regression is not supported; map "
            "them to classes"
        )
    return out


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]  # type: ignore[union-attr]


def token_records(
    rows: list[dict], tokens_column: str, tags_column: str, origin: str
) -> list[dict]:
    from data_prep.labelled import check_bio_tag

    out = []
    for number, row in enumerate(rows, start=1):
        tokens = _as_list(_column(row, tokens_column, origin, "tokens"))
        tags = _as_list(_column(row, tags_column, origin, "tags"))
        if len(tokens) != len(tags):
            raise UserError(
                f"{origin} row {number}: {len(tokens)} tokens but {len(tags)} tags; "
                "give one tag per token"
            )
        for tag in tags:
            check_bio_tag(tag, f"{origin} row {number}")
        if tokens:
            out.append({"tokens": tokens, "tags": tags})
    if not out:
        raise UserError(f"{origin}: no tagged sentences")
    return out


def label_names(task_type: str, train: list[dict], given: list[str] | None) -> list[str]:
    """The label set: `given` when stated, else the labels of the training split (sorted; for
    BIO tags `O` first and each type's B- before its I-)."""
    if given:
        names = [label_text(x) for x in given]
        if len(set(names)) != len(names):
            raise UserError(f"task.labels has duplicates: {given}")
        return names
    if task_type == SEQUENCE:
        return sorted({r["label"] for r in train})
    types = sorted({t[2:] for r in train for t in r["tags"] if t != "O"})
    return ["O", *(f"{p}-{t}" for t in types for p in ("B", "I"))]


def check_labels(task_type: str, records: list[dict], labels: list[str], origin: str) -> None:
    known = set(labels)
    for number, r in enumerate(records, start=1):
        found = [r["label"]] if task_type == SEQUENCE else r["tags"]
        for label in found:
            if label not in known:
                raise UserError(
                    f"{origin} row {number}: unknown label {label!r}; the labels are {labels} "
                    "(from the training split, or task.labels)"
                )


# --------------------------------------------------------------------------- encoding


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per-piece labels: a word's label on its first WordPiece, −100 on the rest and on specials."""
    out, previous = [], None
    for w in word_ids:
        if w is None or w == previous:
            out.append(IGNORE)
        else:
            out.append(word_labels[w])
        if w is not None:
            previous = w
    return out


def first_pieces(word_ids: list[int | None], num_words: int) -> list[int]:
    """Position of each word's first WordPiece, −1 for words with none (cut off or empty)."""
    pos = [-1] * num_words
    for i, w in enumerate(word_ids):
        if w is not None and pos[w] == -1:
            pos[w] = i
    return pos


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int] | int
    first_piece: list[int] | None = None


class EncodedDataset(Dataset):
    def __init__(self, items: list[Encoded]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Encoded]:
        return i, self.items[i]


def encode(
    tokenizer, task_type: str, records: list[dict], label_to_id: dict[str, int], max_len: int
) -> EncodedDataset:
    """Tokenize `records` (truncated to `max_len` pieces including [CLS]/[SEP])."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    items = []
    if task_type == SEQUENCE:
        if records and "text_pair" in records[0]:
            encs = tokenizer.encode_batch([(r["text"], r["text_pair"]) for r in records])
        else:
            encs = tokenizer.encode_batch([r["text"] for r in records])
        for r, e in zip(records, encs, strict=True):
            items.append(Encoded(e.ids, e.type_ids, label_to_id[r["label"]]))
    else:
        encs = tokenizer.encode_batch([r["tokens"] for r in records], is_pretokenized=True)
        for r, e in zip(records, encs, strict=True):
            word_labels = [label_to_id[t] for t in r["tags"]]
            items.append(
                Encoded(
                    e.ids,
                    e.type_ids,
                    align_labels(e.word_ids, word_labels),
                    first_pieces(e.word_ids, len(r["tokens"])),
                )
            )
    return EncodedDataset(items)


class Collator:
    """Pads a batch to its longest sequence; returns tensors and the dataset indices (and, for
    tokens, `word_starts` (B, T) bool: each word's first piece)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[int, Encoded]]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for _, e in batch)
        n = len(batch)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        token_level = isinstance(batch[0][1].labels, list)
        labels = (
            torch.full((n, width), IGNORE, dtype=torch.long)
            if token_level
            else torch.empty(n, dtype=torch.long)
        )
        starts = torch.zeros((n, width), dtype=torch.bool)
        for row, (_, e) in enumerate(batch):
            k = len(e.input_ids)
            ids[row, :k] = torch.tensor(e.input_ids)
            types[row, :k] = torch.tensor(e.token_type_ids)
            mask[row, :k] = 1
            if token_level:
                labels[row, :k] = torch.tensor(e.labels)
                starts[row, [p for p in e.first_piece or [] if p >= 0]] = True
            else:
                labels[row] = e.labels
        out = {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
            "labels": labels,
            "index": torch.tensor([i for i, _ in batch], dtype=torch.long),
        }
        if token_level:  # each word's first piece, where its label sits (the CRF's positions)
            out["word_starts"] = starts
        return out


def word_predictions(piece_preds: list[int], first_piece: list[int], o_id: int) -> list[int]:
    """Word-level label ids from per-piece predictions; words without a piece get `O`."""
    return [piece_preds[p] if p >= 0 else o_id for p in first_piece]
