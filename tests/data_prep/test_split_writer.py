"""SplitWriter writes a split piece by piece exactly as `Dataset.save_to_disk` writes it whole."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from data_prep.prepared import LOOKAHEAD_ROWS, _features
from data_prep.split_writer import SplitWriter, list_table_nbytes, num_shards_for


def pairs_table(num_rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    ids = rng.integers(0, 30_000, int(lengths.sum())).astype(np.int32)
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
        "token_type_ids": pa.ListArray.from_arrays(offsets, pa.array((ids % 2).astype(np.int8))),
        "next_sentence_label": pa.array(rng.integers(0, 2, num_rows).astype(np.int8)),
    })  # fmt: skip


def save_with_datasets(table: pa.Table, path: Path, num_shards: int | None) -> None:
    ds = datasets.Dataset(
        datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=_features())
    )
    ds.save_to_disk(str(path), num_shards=num_shards)


def write_in_pieces(table: pa.Table, path: Path, num_shards: int | None, pieces: list[int]):
    """As bert-prep does: pieces ("pools") of the given sizes, each passed in chunks that end at
    batch ends, with lookahead rows; returns the writer's checksums."""
    n = len(table)
    nbytes = list_table_nbytes(n, len(table["input_ids"].combine_chunks().values), (4, 1))
    writer = SplitWriter(path, _features(), n, nbytes, num_shards_for(n, nbytes, num_shards))
    start = 0
    for size in pieces:
        piece = table.slice(start, size).combine_chunks()  # a pool's rows, built on their own
        lo = 0
        while lo < size:
            hi = lo + writer.rows_to_batch_end(min(2_100, size - lo))
            built = pa.Table.from_batches(
                piece.slice(lo, hi + LOOKAHEAD_ROWS - lo).combine_chunks().to_batches()
            )
            writer.write(built.slice(0, hi - lo))
            lo = hi
        start += size
    writer.close()
    return writer.checksums


@pytest.mark.parametrize("num_shards", [None, 3])
def test_same_bytes_as_save_to_disk(tmp_path, num_shards):
    table = pairs_table(2_500)
    save_with_datasets(table, tmp_path / "theirs", num_shards)
    checksums = write_in_pieces(table, tmp_path / "ours", num_shards, [2_500])
    names = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ours").iterdir())
    for name in names:
        theirs, ours = (tmp_path / d / name for d in ("theirs", "ours"))
        if name == "state.json":  # save_to_disk's fingerprint is random
            a, b = json.loads(theirs.read_text()), json.loads(ours.read_text())
            a.pop("_fingerprint"), b.pop("_fingerprint")
            assert a == b
        else:
            assert theirs.read_bytes() == ours.read_bytes(), name
    assert set(checksums) == {n for n in names if n.endswith(".arrow")}
    assert len(checksums) == (num_shards or 1)


def test_pieces_that_do_not_end_at_batch_ends(tmp_path):
    """Pools end anywhere: a batch then joins two pools' rows; the split still loads the same."""
    table = pairs_table(2_500, seed=1)
    write_in_pieces(table, tmp_path / "ours", 2, [333, 1_500, 667])
    loaded = datasets.load_from_disk(str(tmp_path / "ours"))
    assert loaded.data.table.equals(table)
    assert len(list((tmp_path / "ours").glob("*.arrow"))) == 2


def test_sizes_and_counts():
    for rows in (1, 1_234):
        table = pairs_table(rows)
        values = len(table["input_ids"].combine_chunks().values)
        assert list_table_nbytes(rows, values, (4, 1)) == table.nbytes
    assert num_shards_for(10, 2_000_000_000, None) == 5  # one per 500 MB
    assert num_shards_for(3, 2_000_000_000, None) == 3  # at most one per row
    assert num_shards_for(10, 1, 4) == 4 and num_shards_for(3, 1, 4) == 3


def test_refuses_more_or_fewer_rows_than_announced(tmp_path):
    table = pairs_table(10)
    writer = SplitWriter(tmp_path / "a", _features(), 9, table.nbytes, 1)
    with pytest.raises(ValueError, match="more rows than the 9 announced"):
        writer.write(table)
    writer = SplitWriter(tmp_path / "b", _features(), 11, table.nbytes, 1)
    writer.write(table)
    with pytest.raises(ValueError, match="10 rows written, 11 announced"):
        writer.close()
