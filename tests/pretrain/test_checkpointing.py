"""Atomic checkpoint directories (DeepSpeed) and choosing the checkpoint to resume from.

The real two-process ZeRO save (killed mid-write, then resumed) is in tests/e2e/test_deepspeed.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from pretrain.checkpointing import (
    LAST,
    AtomicCheckpointIO,
    find_resume_checkpoint,
    is_unfinished_write,
    save_directory_atomically,
    unfinished_writes,
    validate_checkpoint,
)
from pretrain.errors import UserError


def partial_deepspeed_checkpoint(path: Path) -> Path:
    """What an interrupted 2-process ZeRO-2 save leaves: `latest` and rank 0's model states, but
    one optimizer shard of two (so it is incomplete, yet looks like a checkpoint)."""
    tag_dir = path / "checkpoint"
    tag_dir.mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    client = {
        "global_step": 8,
        "hyper_parameters": {"model": {}},
        "dp_world_size": 2,
        "ds_config": {"zero_optimization": {"stage": 2}},
    }
    torch.save(client, tag_dir / "mp_rank_00_model_states.pt")
    torch.save({}, tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return path


def test_unfinished_writes_are_recognized_by_name():
    for name in (
        ".last.ckpt.123-0a1b2c3d.tmp",
        ".last.ckpt.tmp-1-ab",
        ".step0000010.ckpt.old-1-ab",
    ):
        assert is_unfinished_write(Path(name)), name
    for name in ("last.ckpt", "step0000010.ckpt", "last.ckpt.tmp-1", ".hidden"):
        assert not is_unfinished_write(Path(name)), name


def test_partial_deepspeed_checkpoint_in_a_temporary_is_skipped_on_resume(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    temp = partial_deepspeed_checkpoint(ckpts / ".last.ckpt.tmp-4242-deadbeef")
    with caplog.at_level(logging.INFO):
        assert find_resume_checkpoint("auto", ckpts) is None  # nothing finished: start fresh
    assert "ignoring 1 unfinished checkpoint write(s)" in caplog.text and temp.name in caplog.text

    # A crash between moving the old `last.ckpt` aside and renaming the new one into place leaves
    # no `last.ckpt`: the newest periodic checkpoint is chosen, never a temporary.
    for step in (4, 8):
        (ckpts / f"step{step:07d}.ckpt").write_bytes(b"")
    assert find_resume_checkpoint("auto", ckpts) == ckpts / "step0000008.ckpt"
    (ckpts / LAST).write_bytes(b"")
    assert find_resume_checkpoint("auto", ckpts) == ckpts / LAST
    assert find_resume_checkpoint("never", ckpts) is None

    # Named explicitly, a temporary is refused with the reason, not read as a checkpoint.
    assert find_resume_checkpoint(str(temp), ckpts) == temp
    with pytest.raises(UserError, match="temporary of an interrupted save"):
        validate_checkpoint(temp, {}, world_size=2, zero_stage=2)


def write_shards(content: str, fail_after: int | None = None):
    """A stand-in for one rank's DeepSpeed save: a `latest` file and three shard files."""

    def write(tmp: Path) -> None:
        (tmp / "checkpoint").mkdir(parents=True)
        for i in range(3):
            if fail_after is not None and i == fail_after:
                raise OSError("disk full")
            (tmp / "checkpoint" / f"shard{i}.pt").write_text(content)
        (tmp / "latest").write_text("checkpoint")

    return write


def test_directory_save_replaces_the_target_only_when_complete(tmp_path):
    strategy = SingleDeviceStrategy(device=torch.device("cpu"))
    ckpts = tmp_path / "checkpoints"
    target = ckpts / LAST
    ckpts.mkdir()
    save_directory_atomically(strategy, target, write_shards("old"))
    assert (target / "checkpoint" / "shard2.pt").read_text() == "old"
    assert unfinished_writes(ckpts) == []

    with pytest.raises(OSError, match="disk full"):
        save_directory_atomically(strategy, target, write_shards("new", fail_after=2))
    # The interrupted save left its temporary; the target is still the old, complete checkpoint.
    (leftover,) = unfinished_writes(ckpts)
    assert leftover.name.startswith(".last.ckpt.tmp-")
    assert (leftover / "checkpoint" / "shard1.pt").read_text() == "new"
    assert sorted(p.name for p in (target / "checkpoint").iterdir()) == [
        "shard0.pt",
        "shard1.pt",
        "shard2.pt",
    ]
    assert (target / "checkpoint" / "shard0.pt").read_text() == "old"

    # The next save of the same name replaces the target and removes the leftover.
    save_directory_atomically(strategy, target, write_shards("new"))
    assert (target / "checkpoint" / "shard2.pt").read_text() == "new"
    assert unfinished_writes(ckpts) == []
    assert sorted(p.name for p in ckpts.iterdir()) == [LAST]


def test_removing_a_checkpoint_never_leaves_a_partial_one(tmp_path):
    ckpts = tmp_path / "checkpoints"
    directory = partial_deepspeed_checkpoint(ckpts / "step0000004.ckpt")
    single = ckpts / "step0000008.ckpt"
    single.write_bytes(b"x")
    io = AtomicCheckpointIO()
    io.remove_checkpoint(directory)
    io.remove_checkpoint(single)
    io.remove_checkpoint(ckpts / "step0000012.ckpt")  # already gone: nothing to do
    assert list(ckpts.iterdir()) == []
