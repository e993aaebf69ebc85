"""File helpers: hashing, JSON, and directories that appear complete or not at all (with the
clean-up of what a killed writer of such a directory left beside it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def remove_tree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _host() -> str:
    # Part of a temporary's name: file-name-safe, and no "-" so the name parses back.
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (the writer of a temporary)."""
    if pid <= 0:  # not a real writer's pid (os.kill would address a process group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def clean_leftovers(final: str | Path) -> list[Path]:
    """Remove the temporaries of `atomic_directory(final)` left by writers that were killed.

    A `.NAME.tmp-…` / `.NAME.old-…` sibling of `final` is a leftover when the process named in it
    no longer runs on this host; temporaries of live processes, and of other hosts (a shared file
    system: their processes cannot be checked from here), are left alone. An `.old-…` directory
    is the previous finished `final`, moved aside just before the new one was renamed into place:
    when the kill came between the two renames (`final` missing), it is renamed back instead of
    deleted. Prints one line naming what was done; returns the paths removed.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}(?:-([A-Za-z0-9._]+))?"
    )
    host = _host()
    stale = []
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        # No host in the name: written before names had one; judged by its pid alone.
        if match and match[3] in (None, host) and not process_alive(int(match[2])):
            stale.append((match[1], path))
    if not stale:
        return []
    done = []
    olds = sorted((p for kind, p in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():
        restored = olds.pop()
        restored.rename(final)
        done.append(f"restored {final} from {restored.name}")
    removed = [p for kind, p in stale if kind == "tmp"] + olds
    for path in removed:
        remove_tree(path)
    if removed:
        names = ", ".join(sorted(p.name for p in removed))
        done.append(f"removed {names} in {final.parent}")
    print(
        f"cleaned up after an interrupted earlier run (its process is gone): {'; '.join(done)}",
        flush=True,
    )
    return removed


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `final`; on success it replaces `final`, else is removed.

    Readers never see a half-written `final`: it is either the old directory or the new one. An
    existing `final` is moved aside first and deleted only after the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The pid and host let a later run tell a killed writer's leftovers (`clean_leftovers`) from
    # a live writer's temporaries.
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{_host()}"
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{tag}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            remove_tree(old)
    finally:
        if tmp.exists():
            remove_tree(tmp)
