"""A split written in the layout of `datasets.Dataset.save_to_disk`, from rows that arrive a piece
at a time, so that no split is ever whole in memory.

`save_to_disk` needs the whole table; `SplitWriter` is told the split's row and byte counts up
front (bert-prep counts the pairs before it builds them) and writes the same files: shards
`data-0000k-of-0000N.arrow` (Arrow streams written by `datasets.arrow_writer.ArrowWriter` in
batches of `writer_batch_size` rows from each shard's start), `dataset_info.json` and
`state.json`, with `save_to_disk`'s shard count, shard boundaries and batch size, so the shards
are byte for byte the ones it writes for the same rows (tests/data_prep/test_split_writer.py).
`state.json`'s fingerprint, random in `save_to_disk`, is here a hash of the shards, whose
sha256 and size (`checksums`) go to manifest.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from data_prep.files import sha256_file

DATASET_DICT_JSON = "dataset_dict.json"


def list_table_nbytes(num_rows: int, num_values: int, value_bytes: tuple[int, ...]) -> int:
    """`pa.Table.nbytes` of a table of `list<...>` columns with int32 offsets holding `num_values`
    values each (item sizes `value_bytes`), plus one one-byte scalar column: what `save_to_disk`
    sizes shards by. Here: input_ids (4), token_type_ids (1), next_sentence_label. (Arrow counts
    4 bytes of offsets per row.)"""
    lists = sum(4 * num_rows + size * num_values for size in value_bytes)
    return lists + num_rows


def num_shards_for(num_rows: int, num_bytes: int, requested: int | None) -> int:
    """`save_to_disk`'s shard count: `requested` (at most one per row), else one per
    `datasets.config.MAX_SHARD_SIZE` bytes."""
    from datasets import config
    from datasets.utils.py_utils import convert_file_size_to_int

    if requested is not None:
        return max(1, min(requested, num_rows))
    shards = int(num_bytes / convert_file_size_to_int(config.MAX_SHARD_SIZE)) + 1
    return max(1, min(num_rows, shards))


def shard_rows(num_rows: int, num_shards: int, index: int) -> int:
    """Rows of shard `index`: `Dataset.shard(contiguous=True)` gives the first `num_rows %
    num_shards` shards one row more."""
    return num_rows // num_shards + (1 if index < num_rows % num_shards else 0)


def shard_start(num_rows: int, num_shards: int, index: int) -> int:
    """First row of shard `index` (`num_rows` for index `num_shards`)."""
    return num_rows // num_shards * index + min(index, num_rows % num_shards)


def shard_of(num_rows: int, num_shards: int, row: int) -> int:
    """The shard that holds `row` (0 <= row < num_rows)."""
    div, mod = divmod(num_rows, num_shards)
    if row < mod * (div + 1):
        return row // (div + 1)
    return mod + (row - mod * (div + 1)) // div


class SplitWriter:
    """Writes `num_rows` rows, given in order by `write` in tables of any size, into `path`."""

    def __init__(
        self, path: Path, features, num_rows: int, num_bytes: int, num_shards: int
    ) -> None:
        from datasets import config
        from datasets.arrow_writer import get_writer_batch_size_from_data_size

        self.path = path
        self.features = features
        self.num_rows = num_rows
        self.num_shards = num_shards
        self.batch_size = config.DEFAULT_MAX_BATCH_SIZE
        if num_bytes > 0:
            self.batch_size = min(
                self.batch_size, get_writer_batch_size_from_data_size(num_rows, num_bytes)
            )
        path.mkdir(parents=True, exist_ok=True)
        self.files = [f"data-{k:05d}-of-{num_shards:05d}.arrow" for k in range(num_shards)]
        self._shard = -1
        self._writer = None
        self._left_in_shard = 0  # rows the current shard still takes
        self._pending: list[pa.Table] = []  # rows of the current batch not written yet
        self._pending_rows = 0
        self._written = 0
        self.checksums: dict[str, dict] = {}
        """File name → {"sha256", "bytes"} of each finished shard."""
        self._next_shard()

    def _next_shard(self) -> None:
        from datasets.arrow_writer import ArrowWriter

        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
            self._writer = None
            name = self.files[self._shard]
            # Hashed while the file is fresh in the page cache; manifest.json records these.
            self.checksums[name] = {
                "sha256": sha256_file(self.path / name),
                "bytes": (self.path / name).stat().st_size,
            }
        self._shard += 1
        if self._shard < self.num_shards:
            self._writer = ArrowWriter(
                features=self.features,
                path=str(self.path / self.files[self._shard]),
                embed_local_files=True,
            )
            self._left_in_shard = shard_rows(self.num_rows, self.num_shards, self._shard)

    def rows_to_batch_end(self, max_rows: int) -> int:
        """How many of the next `max_rows` rows to pass to `write` so that they end where a batch
        ends (all `max_rows` when no batch ends within them).

        A batch that lies inside one `write`'s table is written as a slice of it, and Arrow's IPC
        writer then pads its buffers (to 8 bytes) with the bytes that follow in the table, as
        `save_to_disk` does with its slices of the whole split; a batch joined from two tables
        has exact buffers and zero padding. Tables that end at batch ends keep the shards
        identical to `save_to_disk`'s, as long as each table's arrays go on (`slice`) for 7 more
        bytes (rows) than the rows passed."""
        given = self._written + self._pending_rows
        target = min(given + max_rows, self.num_rows)
        if target == self.num_rows:
            return target - given
        shard = shard_of(self.num_rows, self.num_shards, target)
        start = shard_start(self.num_rows, self.num_shards, shard)
        end = start + (target - start) // self.batch_size * self.batch_size
        return end - given if end > given else max_rows

    def write(self, table: pa.Table) -> None:
        """Append rows; whole batches go to the shard as soon as they are complete."""
        if self._written + self._pending_rows + len(table) > self.num_rows:
            raise ValueError(f"more rows than the {self.num_rows} announced")
        self._pending.append(table)
        self._pending_rows += len(table)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        while self._pending_rows:
            want = min(self.batch_size, self._left_in_shard)
            if self._pending_rows < want and not final:
                return
            rows = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
            batch, rest = rows.slice(0, want), rows.slice(want)
            self._writer.write_table(batch)
            self._written += len(batch)
            self._left_in_shard -= len(batch)
            self._pending, self._pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)
            if self._left_in_shard == 0:
                self._next_shard()

    def close(self) -> None:
        """Finish the shards and write `dataset_info.json` and `state.json`."""
        import datasets
        from datasets.utils.py_utils import asdict

        self._flush(final=True)
        if self._written != self.num_rows:
            raise ValueError(f"{self._written} rows written, {self.num_rows} announced")
        while self._writer is not None:  # shards of no rows (more shards than rows cannot occur)
            self._next_shard()
        # The state and info of the split as a Dataset would write them: taken from an empty one.
        empty = datasets.Dataset(
            datasets.table.InMemoryTable(self.features.arrow_schema.empty_table()),
            info=datasets.DatasetInfo(features=self.features),
        )
        keys = ["_format_columns", "_format_kwargs", "_format_type", "_output_all_columns"]
        state = {key: empty.__dict__[key] for key in keys}
        state["_fingerprint"] = self._fingerprint()
        state["_split"] = None
        state["_data_files"] = [{"filename": name} for name in self.files]
        with open(self.path / datasets.config.DATASET_STATE_JSON_FILENAME, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        info = asdict(empty.info)
        with open(self.path / datasets.config.DATASET_INFO_FILENAME, "w") as f:
            json.dump({key: info[key] for key in sorted(info)}, f, indent=2)

    def _fingerprint(self) -> str:
        shards = "".join(self.checksums[name]["sha256"] for name in self.files)
        return hashlib.sha256(shards.encode()).hexdigest()[:16]


def write_dataset_dict_json(path: Path, splits: list[str]) -> None:
    """`dataset_dict.json` as `DatasetDict.save_to_disk` writes it."""
    with open(path / DATASET_DICT_JSON, "w") as f:
        json.dump({"splits": splits}, f)
