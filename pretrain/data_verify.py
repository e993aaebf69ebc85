"""Check a prepared data directory before training reads it (`data.verify`).

A shard damaged on disk or in a copy otherwise fails late and namelessly: flipped bytes in the
token ids train for a while and then index past the embedding; a truncated shard gives a raw
pyarrow error. `verify_prepared` compares every Arrow shard with the size and sha256 that
`bert-prep` recorded in manifest.json (`files`), then checks the value range of each column the
model indexes with (token ids against the vocabulary, token types and NSP labels against 0/1), so
any of these failures becomes one line naming the shard. Hashing streams the files (1 MiB chunks);
the range check is a vectorised min/max per shard, so the whole check takes about as long as
reading the data once.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.files import sha256_file
from pretrain.errors import UserError

SPLITS = ("train", "validation")
# Column -> exclusive upper bound of its values (None: the vocabulary size).
_RANGES = {"input_ids": None, "token_type_ids": 2, "next_sentence_label": 2}


def rebuild_hint(data_dir: Path) -> str:
    return f"rebuild the data with bert-prep force=true (output_dir={data_dir})"


def verify_prepared(data_dir: Path, manifest: dict, vocab_size: int, notify: bool = True) -> None:
    """Raise a `UserError` naming the first shard of `data_dir` that is missing, differs from
    manifest.json's checksums, cannot be read, or holds ids outside `vocab_size` (token ids) or
    0/1 (token types, NSP labels). A directory prepared before bert-prep recorded checksums is only
    range-checked; `notify` prints a line saying so (pass False on all but one process)."""
    data_dir = Path(data_dir)
    files = manifest.get("files")
    if files is None:
        if notify:
            print(
                f"warning: {data_dir} cannot be verified: its manifest.json has no checksums "
                "(prepared by an older bert-prep); re-run bert-prep force=true "
                f"(output_dir={data_dir}) to record them, or set data.verify=false to skip the check",
                flush=True,
            )
        shards = sorted(p for split in SPLITS for p in (data_dir / split).glob("*.arrow"))
    else:
        shards = []
        for name, expected in files.items():
            shard = data_dir / name
            check_checksum(shard, expected, data_dir)
            if shard.suffix == ".arrow":
                shards.append(shard)
    for shard in shards:
        check_value_ranges(shard, vocab_size, data_dir)


def check_checksum(shard: Path, expected: dict, data_dir: Path) -> None:
    if not shard.is_file():
        raise UserError(
            f"data shard {shard} is missing (manifest.json lists it); {rebuild_hint(data_dir)}"
        )
    size = shard.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise UserError(
            f"data shard {shard} is corrupt ({size} bytes, manifest.json records "
            f"{expected['bytes']}: truncated or overwritten); {rebuild_hint(data_dir)}"
        )
    if sha256_file(shard) != expected.get("sha256"):
        raise UserError(
            f"data shard {shard} is corrupt (sha256 mismatch against manifest.json); "
            f"{rebuild_hint(data_dir)}"
        )


def read_shard(shard: Path, data_dir: Path):
    """The Arrow table of one `datasets` shard (an IPC stream, memory-mapped); a truncated or
    garbled file is a `UserError` naming it."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(str(shard))).read_all()
    except (OSError, pa.ArrowException) as err:
        raise UserError(
            f"data shard {shard} cannot be read ({err}); {rebuild_hint(data_dir)}"
        ) from None


def check_value_ranges(shard: Path, vocab_size: int, data_dir: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.types as pt

    table = read_shard(shard, data_dir)
    for column, bound in _RANGES.items():
        if column not in table.column_names:
            continue  # PairDataset names missing columns
        values = table.column(column)
        if pt.is_list(values.type) or pt.is_large_list(values.type):
            values = pc.list_flatten(values)
        if len(values) == 0:
            continue
        low, high = (v.as_py() for v in pc.min_max(values).values())
        limit = vocab_size if bound is None else bound
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            allowed = (
                f"the vocabulary's ids 0-{vocab_size - 1} (vocab_size={vocab_size})"
                if bound is None
                else f"0-{limit - 1}"
            )
            raise UserError(
                f"data shard {shard} is corrupt: column {column} holds {bad}, outside "
                f"{allowed}; {rebuild_hint(data_dir)}"
            )
