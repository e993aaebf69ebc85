"""Checkpoint integrity: checksums written at save time and checked at load, the CRC fallback for
older checkpoints, weights-only loading that refuses crafted pickles, and a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.checkpointing import (
    AtomicCheckpointIO,
    remove_unfinished_writes,
    validate_checkpoint,
)
from pretrain.errors import UserError
from pretrain.integrity import (
    DIRECTORY_SUMS,
    CorruptCheckpointError,
    checksum_path,
    load_weights_only,
    verify_checkpoint,
    write_directory_checksums,
)
from tests.faults import booby_trapped, flip_bytes


def checkpoint_dict() -> dict:
    return {
        "state_dict": {"model.w": torch.randn(64, 64)},
        "global_step": 3,
        "hyper_parameters": {"model": {"hidden_size": 64}},
    }


def test_save_writes_a_checksum_that_load_verifies(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint_dict(), path)
    assert checksum_path(path).read_text().endswith("  last.ckpt\n")
    assert verify_checkpoint(path) is True
    assert validate_checkpoint(path, {"hidden_size": 64}) == 3
    flip_bytes(path)
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint corrupt: .*last\.ckpt"):
        verify_checkpoint(path)


def test_corrupt_last_checkpoint_names_the_older_one_to_resume_from(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint_dict(), tmp_path / "step0000002.ckpt")
    io.save_checkpoint(checkpoint_dict(), tmp_path / "step0000004.ckpt")
    io.save_checkpoint(checkpoint_dict(), tmp_path / "last.ckpt")
    flip_bytes(tmp_path / "last.ckpt")
    with pytest.raises(UserError, match=r"resume=.*step0000004\.ckpt \(nothing was written\)"):
        validate_checkpoint(tmp_path / "last.ckpt", {})
    with pytest.raises(UserError, match="checkpoint corrupt"):  # Lightning's own load path too
        io.load_checkpoint(tmp_path / "last.ckpt")


def test_checkpoint_without_checksum_is_checked_by_its_zip_crc(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save(checkpoint_dict(), path)  # as written before checksums existed
    assert verify_checkpoint(path) is False
    flip_bytes(path)
    with pytest.raises(CorruptCheckpointError, match="fails its CRC-32 check"):
        verify_checkpoint(path)


def test_directory_checksums_catch_a_changed_shard(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    torch.save({"w": torch.randn(128, 128)}, ckpt / "checkpoint" / "shard.pt")
    (ckpt / "latest").write_text("checkpoint")
    write_directory_checksums(ckpt)
    assert "checkpoint/shard.pt" in (ckpt / DIRECTORY_SUMS).read_text()
    assert verify_checkpoint(ckpt) is True
    flip_bytes(ckpt / "checkpoint" / "shard.pt")
    with pytest.raises(CorruptCheckpointError, match=r"shard\.pt"):
        verify_checkpoint(ckpt)
    (ckpt / "checkpoint" / "shard.pt").unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        verify_checkpoint(ckpt)


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    trap = booby_trapped(tmp_path / "trap.ckpt", marker, checkpoint_dict())
    with pytest.raises(UserError, match=r"refusing to load .*trap\.ckpt.*posix\.system"):
        load_weights_only(trap)
    with pytest.raises(UserError, match="refusing to load"):
        validate_checkpoint(trap, {})
    with pytest.raises(UserError, match="refusing to load"):
        AtomicCheckpointIO().load_checkpoint(trap)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  hidden_size: 128\n")
    with pytest.raises(UserError, match=r"config\.yaml is not a checkpoint") as err:
        validate_checkpoint(config, {})
    assert "corrupt" not in str(err.value) and "delete" not in str(err.value)


def test_leftover_temporaries_of_a_dead_launch_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / f".last.ckpt.{dead_pid}.tmp"
    stale_file.write_bytes(b"partial")
    stale_dir = tmp_path / f".last.ckpt.tmp-{dead_pid}-abcd1234"
    stale_dir.mkdir()
    live = tmp_path / f".step0000010.ckpt.tmp-{os.getppid()}-abcd1234"  # a running process
    live.mkdir()
    removed = remove_unfinished_writes(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert not stale_file.exists() and not stale_dir.exists() and live.exists()


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target)],
                          capture_output=True)  # fmt: skip
    return proc.returncode == 0


def test_full_disk_is_one_line_naming_the_directory_and_keeps_the_old_checkpoint(tmp_path):
    disk = tmp_path / "small_disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root to mount a 256 KiB tmpfs (CI runs as root)")
    try:
        io = AtomicCheckpointIO()
        io.save_checkpoint({"w": torch.zeros(1000)}, disk / "last.ckpt")  # 4 KB: fits
        with pytest.raises(UserError, match=r"no space left on the device of .*small_disk") as err:
            io.save_checkpoint({"w": torch.zeros(1_000_000)}, disk / "last.ckpt")  # 4 MB
        assert "about 4 MB needed" in str(err.value) and "\n" not in str(err.value)
        assert verify_checkpoint(disk / "last.ckpt") is True  # the previous one, intact
        assert sorted(p.name for p in disk.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
