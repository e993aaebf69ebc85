"""Faults a careless or unlucky user meets, made on purpose: crafted pickles, flipped and
truncated bytes. Plain functions shared by the test modules (no fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class Trap:
    """Unpickling this runs a shell command: what a crafted checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def booby_trapped(path: Path, marker: Path, base: dict | None = None) -> Path:
    """`torch.save` of `base` plus a payload that would create `marker` if ever unpickled."""
    torch.save({**(base or {}), "payload": Trap(marker)}, path)
    return path


def flip_bytes(path: Path, offset_fraction: float = 0.5) -> None:
    """Overwrite a few bytes in the middle, keeping the size: silent corruption."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(int(size * offset_fraction))
        f.write(b"\xde\xad\xbe\xef" * 4)


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a file short, as a copy interrupted half-way would."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))
