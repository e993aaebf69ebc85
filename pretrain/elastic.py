"""Elastic resume of DeepSpeed runs: continue a ZeRO checkpoint on another number of processes.

DeepSpeed's shards are cut for the world size that wrote them. Its universal checkpoint format
(`deepspeed.checkpoint.ds_to_universal`) holds every parameter's fp32 master copy and optimizer
moments whole, one directory per parameter, which an engine of any world size loads with
`"checkpoint": {"load_universal": true}` and slices for its own rank. `universal_checkpoint`
converts a checkpoint once, into the resuming run's `checkpoints/universal/step{N}-{digest}` (the
digest is that of the source's `sha256sums.txt`, so a later checkpoint of the same step is
converted anew), atomically (a temporary sibling, renamed when complete, with its own `sha256sums.txt`), and
reuses the conversion on the next launch. The sample stream is indexed by optimizer step, not by
rank, so the resumed run trains on exactly the samples the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pretrain.errors import UserError
from pretrain.integrity import (
    DIRECTORY_SUMS,
    check_deepspeed_files_loadable,
    verify_checkpoint,
    write_directory_checksums,
)

UNIVERSAL_DIR = "universal"
"""Subdirectory of `checkpoints/` holding the conversions."""
TAG = "checkpoint"
"""The tag directory inside a conversion, as in the checkpoints Lightning's DeepSpeed writes."""
LATEST = "latest_universal"
"""The file DeepSpeed reads to find the tag of a universal checkpoint."""
WAIT_SECONDS = 3600
"""How long ranks other than 0 wait for rank 0's conversion (large models take minutes)."""


def universal_path(checkpoint: Path, step: int, checkpoint_dir: Path | None = None) -> Path:
    """Where the conversion of `checkpoint` (a DeepSpeed directory at optimizer step `step`) goes:
    under `checkpoint_dir/universal/` (the resuming run's own; default: beside the checkpoint)."""
    checkpoint = Path(checkpoint)
    sums = checkpoint / DIRECTORY_SUMS
    identity = sums.read_bytes() if sums.is_file() else str(checkpoint.resolve()).encode()
    digest = hashlib.sha256(identity).hexdigest()[:12]
    parent = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoint.parent
    return parent / UNIVERSAL_DIR / f"step{step:07d}-{digest}"


def universal_checkpoint(
    checkpoint: Path, step: int, rank: int, checkpoint_dir: Path | None = None
) -> Path:
    """The universal conversion of `checkpoint`, made by rank 0 if it does not exist yet (every
    rank calls this; the others wait for it), in the resuming run's `checkpoint_dir` (a
    checkpoint of another run, `resume=PATH`, is only read). `checkpoint` must be validated."""
    final = universal_path(checkpoint, step, checkpoint_dir)
    if rank == 0 and not final.is_dir():
        _convert(Path(checkpoint), final)
    deadline = time.monotonic() + WAIT_SECONDS
    while not final.is_dir():
        if time.monotonic() > deadline:
            raise UserError(
                f"rank {rank} waited {WAIT_SECONDS} s for rank 0 to convert {checkpoint} to "
                f"{final}; check rank 0's log (the ranks must share the run directory)"
            )
        time.sleep(1.0)
    verify_checkpoint(final)
    # DeepSpeed unpickles these itself: each file is read weights-only first, as any checkpoint.
    check_deepspeed_files_loadable(final / TAG, final)
    return final


def _convert(checkpoint: Path, final: Path) -> None:
    tag = (checkpoint / "latest").read_text().strip()
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        cmd = [
            sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
            "--input_folder", str(checkpoint / tag), "--output_folder", str(tmp / TAG),
            # Lightning's checkpoints lack the Megatron-specific `universal_checkpoint_info`,
            # which only describes tensor/pipeline-parallel slicing (none here).
            "--inject_missing_state", "--num_extract_workers", "2", "--num_merge_workers", "2",
        ]  # fmt: skip
        env = dict(os.environ)
        if "DS_ACCELERATOR" not in env:
            import torch

            if not torch.cuda.is_available():
                env["DS_ACCELERATOR"] = "cpu"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"converting {checkpoint} to DeepSpeed's universal format failed ({last}); "
                f"relaunch with the world size that wrote it, or pass elastic_resume=false"
            )
        (tmp / LATEST).write_text(TAG)
        write_directory_checksums(tmp)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
