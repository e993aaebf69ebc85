"""Fine-tuning data: reading local files, checks, first-WordPiece label alignment, batching."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from tokenizers import Tokenizer

from pretrain.errors import UserError
from pretrain.finetune.data import (
    IGNORE,
    SEQUENCE,
    TOKEN,
    Collator,
    align_labels,
    check_labels,
    encode,
    first_pieces,
    label_names,
    read_rows,
    sequence_records,
    token_records,
    word_predictions,
)


def test_align_labels_puts_each_word_label_on_its_first_piece_only():
    # [CLS] w0 w1a w1b w1c w2 [SEP]
    word_ids = [None, 0, 1, 1, 1, 2, None]
    assert align_labels(word_ids, [5, 6, 7]) == [IGNORE, 5, 6, IGNORE, IGNORE, 7, IGNORE]
    assert first_pieces(word_ids, 3) == [1, 2, 5]
    # word 3 was cut off by truncation: no piece, predicted O (id 0)
    assert first_pieces(word_ids, 4) == [1, 2, 5, -1]
    assert word_predictions([9, 1, 2, 3, 3, 4, 9], [1, 2, 5, -1], o_id=0) == [1, 2, 4, 0]


def test_encode_aligns_with_the_real_tokenizer(prepared_english):
    tok = Tokenizer.from_file(str(prepared_english / "tokenizer" / "tokenizer.json"))
    records = [{"tokens": ["The", "xylophonists", "returned"], "tags": ["O", "B-X", "O"]}]
    ds = encode(tok, TOKEN, records, {"O": 0, "B-X": 1, "I-X": 2}, max_len=32)
    item = ds.items[0]
    pieces = [tok.id_to_token(i) for i in item.input_ids]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    rare = [i for i, p in enumerate(pieces) if p.startswith("##")]
    assert rare, pieces  # the rare word splits into several pieces
    labelled = [i for i, label in enumerate(item.labels) if label != IGNORE]
    assert [item.labels[i] for i in labelled] == [0, 1, 0]
    assert labelled == item.first_piece and not set(rare) & set(labelled)

    truncated = encode(tok, TOKEN, records, {"O": 0, "B-X": 1, "I-X": 2}, max_len=3)
    assert truncated.items[0].first_piece[1:] == [-1, -1]


def test_collator_pads_and_marks_padding():
    tok_batch = encode_free_batch()
    batch = Collator(pad_id=0)(tok_batch)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 1, IGNORE], [IGNORE, IGNORE, IGNORE]]
    assert batch["index"].tolist() == [4, 9]
    seq = Collator(0)([(0, _enc([2, 3], 1)), (1, _enc([2, 5, 3], 0))])
    assert seq["labels"].dtype == torch.long and seq["labels"].tolist() == [1, 0]


def _enc(ids, labels, first=None):
    from pretrain.finetune.data import Encoded

    return Encoded(ids, [0] * len(ids), labels, first)


def encode_free_batch():
    return [(4, _enc([2, 7, 3], [IGNORE, 1, IGNORE])), (9, _enc([2, 3], [IGNORE, IGNORE]))]


def test_local_csv_jsonl_and_parquet(tmp_path):
    rows = [{"review": "good film", "y": "pos"}, {"review": "bad", "y": "neg"}]
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["review", "y"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.csv", "a.jsonl", "a.parquet"):
        recs = sequence_records(read_rows(tmp_path / name), "review", "y", None, name)
        assert recs == [{"text": "good film", "label": "pos"}, {"text": "bad", "label": "neg"}]
    with pytest.raises(
        UserError, match=r"no text column 'text'; its columns are \['review', 'y'\]"
    ):
        sequence_records(read_rows(tmp_path / "a.csv"), "text", "y", None, "a.csv")
    with pytest.raises(UserError, match="does not exist"):
        read_rows(tmp_path / "missing.csv")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        read_rows(tmp_path / "a.txt")


def test_token_records_from_strings_and_their_errors():
    rows = [{"tokens": "New York rocks", "tags": "B-LOC I-LOC O"}]
    assert token_records(rows, "tokens", "tags", "f") == [
        {"tokens": ["New", "York", "rocks"], "tags": ["B-LOC", "I-LOC", "O"]}
    ]
    with pytest.raises(UserError, match="3 tokens but 2 tags"):
        token_records([{"tokens": "a b c", "tags": "O O"}], "tokens", "tags", "f")
    with pytest.raises(UserError, match="'LOC' is not BIO"):
        token_records([{"tokens": "a", "tags": "LOC"}], "tokens", "tags", "f")
    with pytest.raises(UserError, match="no tags column 'ner'"):
        token_records(rows, "tokens", "ner", "f")


def test_label_sets_and_unknown_labels():
    train = [
        {"tokens": ["a", "b"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["c"], "tags": ["B-LOC"]},
    ]
    labels = label_names(TOKEN, train, None)
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    with pytest.raises(UserError, match=r"dev\.jsonl row 1: unknown label 'B-ORG'"):
        check_labels(TOKEN, [{"tokens": ["x"], "tags": ["B-ORG"]}], labels, "dev.jsonl")
    seq = [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}]
    assert label_names(SEQUENCE, seq, None) == ["neg", "pos"]
    with pytest.raises(UserError, match="unknown label 'meh'"):
        check_labels(SEQUENCE, [{"text": "z", "label": "meh"}], ["neg", "pos"], "test.csv")


def test_integral_float_labels_are_the_integer_labels(tmp_path):
    """0.0/1.0 from a CSV written by pandas, floats from JSONL or Parquet, ints elsewhere: one
    label set {0, 1}, not "unknown labels" between the splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "train.csv").write_text("text,label\ngood,1.0\nbad,0.0\nfine,1\n")
    (tmp_path / "dev.jsonl").write_text(
        '{"text": "ok", "label": 1.0}\n{"text": "no", "label": 0}\n'
    )
    pq.write_table(pa.table({"text": ["meh"], "label": [0.0]}), tmp_path / "test.parquet")
    train, dev, test = (
        sequence_records(read_rows(tmp_path / name), "text", "label", None, name)
        for name in ("train.csv", "dev.jsonl", "test.parquet")
    )
    assert [r["label"] for r in train] == ["1", "0", "1"]
    labels = label_names(SEQUENCE, train, None)
    assert labels == ["0", "1"]
    for name, records in (("dev.jsonl", dev), ("test.parquet", test)):
        check_labels(SEQUENCE, records, labels, name)
    assert label_names(SEQUENCE, train, [0.0, 1.0]) == ["0", "1"]  # task.labels as floats


def test_real_valued_labels_are_rejected(tmp_path):
    (tmp_path / "scores.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in (("a", 1.0), ("b", 0.13)))
    )
    with pytest.raises(UserError) as err:
        sequence_records(
            read_rows(tmp_path / "scores.jsonl"), "text", "label", None, "scores.jsonl"
        )
    assert str(err.value) == (
        "scores.jsonl column label: labels look like real numbers (e.g. 0.13); bert-finetune "
        "classifies into discrete labels — regression is not supported; map them to classes"
    )
    # Text classes that happen to include a number stay classes.
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "2.5"}]
    assert [r["label"] for r in sequence_records(rows, "text", "label", None, "f")] == [
        "pos",
        "2.5",
    ]
