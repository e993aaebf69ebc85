"""Read back an offline W&B run (`run-<id>.wandb`) for tests: its config and logged history.

The file is W&B's transaction log: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
leveldb-log framing in 32 KiB blocks (crc32 4 B, length 2 B, type 1 B: full/first/middle/last),
each record a `wandb_internal_pb2.Record` protobuf. wandb ships no Python reader any more.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the rest of a block too small for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history(path: Path) -> list[dict]:
    """The logged rows, each a dict of key -> value (JSON-decoded)."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in r.history.item
                }
            )
    return rows


def config(path: Path) -> dict:
    """The run config, merged over all config records."""
    merged: dict = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        updates = (
            r.config.update if kind == "config" else r.run.config.update if kind == "run" else []
        )
        for item in updates:
            merged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return merged
