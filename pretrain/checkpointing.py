"""Atomic, checksummed checkpoints (single files and DeepSpeed directories), and finding and
validating the checkpoint a run resumes from."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from data_prep.files import process_alive
from pretrain.errors import UserError
from pretrain.integrity import (
    CorruptCheckpointError,
    check_deepspeed_files_loadable,
    checksum_path,
    disk_full_error,
    is_disk_full,
    load_weights_only,
    older_checkpoints,
    sha256_of,
    tensor_bytes,
    verify_checkpoint,
    write_directory_checksums,
    write_file_checksum,
)

LAST = "last.ckpt"
PERIODIC = "step*.ckpt"
"""Names of the periodic checkpoints (`step{step:07d}.ckpt`, zero-padded: they sort by step)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same directory, fsync, then rename over the target.

    A crash mid-write leaves at most a `*.tmp` file, never a truncated `.ckpt` that looks valid;
    `os.replace` is atomic on POSIX within one filesystem.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            digest = sha256_of(tmp)  # of the bytes on disk, read back
            # The checksum goes first: a crash between the two renames leaves the previous
            # checkpoint with a checksum that does not match it, reported as corrupt (and the
            # periodic checkpoint offered), never a wrong file that passes.
            write_file_checksum(path, digest)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            if is_disk_full(err):
                raise disk_full_error(path.parent, tensor_bytes(checkpoint), path.name) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)  # make the rename itself durable

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """Verified against its checksum, then read weights-only, whatever the caller asked."""
        verify_resumable(Path(path))
        return load_weights_only(Path(path))

    def remove_checkpoint(self, path) -> None:
        """Rename out of sight first, then delete: a crash while deleting a DeepSpeed directory
        leaves a dot-named temporary, not a checkpoint with shards missing."""
        path = Path(path)
        checksum_path(path).unlink(missing_ok=True)
        if not path.exists():
            return
        doomed = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        path.rename(doomed)
        _remove(doomed)


def is_unfinished_write(path: Path) -> bool:
    """Whether `path` is a temporary left by an interrupted atomic save: `.NAME.PID.tmp` (a file,
    `AtomicCheckpointIO`), `.NAME.tmp-TAG` (a DeepSpeed directory being written) or `.NAME.old-TAG`
    (the previous directory, moved aside while the new one is renamed into place)."""
    name = Path(path).name
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name or ".old-" in name)


def unfinished_writes(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.iterdir() if is_unfinished_write(p))


def _writer_pid(path: Path) -> int | None:
    """The process id in a temporary's name (`.NAME.PID.tmp`, `.NAME.tmp-PID-TAG`,
    `.NAME.old-PID-TAG`), or None."""
    name = Path(path).name
    for marker in (".tmp-", ".old-"):
        if marker in name:
            head = name.split(marker, 1)[1].split("-", 1)[0]
            return int(head) if head.isdigit() else None
    head = name[: -len(".tmp")].rsplit(".", 1)[-1] if name.endswith(".tmp") else ""
    return int(head) if head.isdigit() else None


@rank_zero_only
def remove_unfinished_writes(checkpoint_dir: Path) -> list[Path]:
    """Delete temporaries left in `checkpoint_dir` by an interrupted launch (killed mid-save),
    before this launch writes anything. A temporary whose writer process still runs on this
    machine is kept (another launch is saving into the same run)."""
    removed = []
    for leftover in unfinished_writes(Path(checkpoint_dir)):
        pid = _writer_pid(leftover)
        if pid is not None and pid != os.getpid() and process_alive(pid):
            continue
        _remove(leftover)
        removed.append(leftover)
    if removed:
        rank_zero_info(
            f"removed {len(removed)} unfinished checkpoint write(s) left in {checkpoint_dir} by "
            f"an interrupted launch: {', '.join(p.name for p in removed)}"
        )
    return removed


def save_directory_atomically(strategy, filepath, write: Callable[[Path], None]) -> None:
    """Write a checkpoint directory (DeepSpeed: one shard per rank) so that it appears complete or
    not at all.

    Every rank writes into the same temporary sibling `.NAME.tmp-TAG` (TAG chosen by rank 0 and
    broadcast); after a barrier, rank 0 fsyncs the files, moves an existing `NAME` aside to
    `.NAME.old-TAG`, renames the temporary to `NAME` and deletes the old one; a second barrier
    keeps the other ranks from going on before `NAME` exists. A crash mid-write leaves only
    dot-named temporaries, which resuming ignores (`find_resume_checkpoint`); a crash between the
    two renames leaves no `NAME` at all, and resuming falls back to the newest periodic
    checkpoint. The ranks must share the filesystem (as DeepSpeed's own checkpoints require).
    """
    final = Path(filepath)
    tag = strategy.broadcast(f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    try:
        write(tmp)
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            _remove(tmp)
            raise disk_full_error(final.parent, None, final.name) from None
        raise
    strategy.barrier("checkpoint written")
    if strategy.is_global_zero:
        write_directory_checksums(tmp)
        _fsync_tree(tmp)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{tag}"
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
        # The replaced directory, and temporaries of this name left by an interrupted launch.
        for stale in final.parent.glob(f".{final.name}.*"):
            if is_unfinished_write(stale):
                _remove(stale)
    strategy.barrier("checkpoint renamed")


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` (written by any local rank) and the directories to disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def find_resume_checkpoint(resume: str, checkpoint_dir: Path) -> Path | None:
    """`auto`: the run's last checkpoint if there is one (else its newest periodic checkpoint);
    `never`: None; else an explicit path. Temporaries of interrupted saves are never chosen."""
    if resume == "never":
        return None
    if resume == "auto":
        leftovers = unfinished_writes(checkpoint_dir)
        if leftovers:
            rank_zero_info(
                f"ignoring {len(leftovers)} unfinished checkpoint write(s) in {checkpoint_dir} "
                f"(their writer process still runs: is another launch using this run?): "
                f"{', '.join(p.name for p in leftovers)}"
            )
        last = checkpoint_dir / LAST
        if last.exists():
            return last
        periodic = sorted(checkpoint_dir.glob(PERIODIC))
        return periodic[-1] if periodic else None
    path = Path(resume)
    if not path.exists():
        raise UserError(
            f"resume={resume!r}: no such checkpoint; give an existing .ckpt, 'auto' or 'never'"
        )
    return path


def is_deepspeed_checkpoint(path: Path) -> bool:
    """DeepSpeed writes a checkpoint as a directory of per-rank shards; everything else is a file."""
    return Path(path).is_dir()


def validate_checkpoint(
    path: Path,
    model_hparams: dict,
    world_size: int | None = None,
    zero_stage: int | None = None,
    elastic: bool = False,
) -> int:
    """Read a checkpoint's metadata, check it belongs to this model and launch; return its step.
    `elastic`: a DeepSpeed checkpoint of another world size is accepted (it will be converted).

    `zero_stage` is None for the auto/ddp strategies (a single `.ckpt` file is expected) and the
    ZeRO stage under DeepSpeed (a checkpoint directory with one shard per rank is expected; it must
    have been written by `world_size` processes at the same stage). Fails with a message naming
    the checkpoint when it is truncated, incomplete, not a training checkpoint, of another launch
    shape, or was trained with a different architecture.
    """
    path = Path(path)
    if is_unfinished_write(path):
        raise UserError(
            f"checkpoint {path} is the temporary of an interrupted save, not a finished "
            f"checkpoint; pass resume=<a checkpoint without the leading dot> or resume=never"
        )
    if is_deepspeed_checkpoint(path):
        if zero_stage is None:
            raise UserError(
                f"checkpoint {path} is a DeepSpeed (sharded) checkpoint but this run does not use "
                f"DeepSpeed; resume with strategy=deepspeed_zeroN (any number of processes: "
                f"elastic_resume converts it), or start a new run from its weights with "
                f"init_from={path} (the optimizer state starts afresh)"
            )
        ckpt = _read_deepspeed_checkpoint(path, None if elastic else world_size, zero_stage)
    else:
        if zero_stage is not None:
            raise UserError(
                f"checkpoint {path} is a single-file checkpoint but this run uses DeepSpeed, which "
                f"resumes from its own sharded checkpoint directories; resume with strategy=auto or "
                f"ddp (any number of processes), or start a new run from its weights with "
                f"init_from={path} (the optimizer state starts afresh)"
            )
        verify_resumable(path)
        ckpt = _load(path, path)
    missing = [k for k in ("global_step", "hyper_parameters") if k not in ckpt]
    if not is_deepspeed_checkpoint(path) and "state_dict" not in ckpt:
        missing.insert(0, "state_dict")
    if missing:
        raise UserError(
            f"checkpoint {path} lacks {missing}: it is not a `bert-pretrain` checkpoint"
        )
    saved = ckpt["hyper_parameters"].get("model", {})
    diffs = [
        f"model.{k}: checkpoint {saved.get(k)!r}, config {v!r}"
        for k, v in model_hparams.items()
        if k in saved and saved[k] != v
    ]
    if diffs:
        raise UserError(
            f"checkpoint {path} is of another model ({'; '.join(diffs)}); use a new run name "
            f"(name=...) or resume=never"
        )
    return int(ckpt["global_step"])


def verify_resumable(path: Path) -> None:
    """`verify_checkpoint`, with the way out in the message: an older checkpoint of the run."""
    try:
        verify_checkpoint(path)
    except CorruptCheckpointError as err:
        older = older_checkpoints(path)
        fix = (
            f"resume from an older checkpoint: resume={older[0]}"
            if older
            else "no older checkpoint is beside it: pass resume=never with a new name= to start over"
        )
        raise CorruptCheckpointError(f"{err}; {fix} (nothing was written)") from None


def _load(file: Path, checkpoint: Path, deepspeed: bool = False) -> dict:
    """Weights-only read of a checkpoint file; errors name `checkpoint` (what the user gave)."""
    try:
        return load_weights_only(file, checkpoint, deepspeed=deepspeed)
    except CorruptCheckpointError as err:
        older = older_checkpoints(checkpoint)
        fix = f"resume={older[0]}" if older else "resume=never with a new name="
        raise CorruptCheckpointError(f"{err}; pass {fix}") from None


def deepspeed_world_size(path: Path) -> int:
    """How many processes wrote a (validated) DeepSpeed checkpoint directory."""
    tag_dir = path / (path / "latest").read_text().strip()
    rank0 = next(
        f
        for f in (
            tag_dir / "mp_rank_00_model_states.pt",
            tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt",
        )
        if f.is_file()
    )
    return int(_load(rank0, path, deepspeed=True)["dp_world_size"])


def deepspeed_shard_files(tag_dir: Path, world_size: int, ds_config: dict) -> list[Path]:
    """The files a complete DeepSpeed checkpoint (one model-parallel rank) holds: model states
    (per rank under ZeRO-3) and, where DeepSpeed partitions the optimizer (ZeRO >= 1, or its bf16
    optimizer at stage 0), one optimizer shard per rank (`bf16_`-prefixed in bf16 mode)."""
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
    if stage == 3:
        files = [
            tag_dir / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)
        ]
    else:
        files = [tag_dir / "mp_rank_00_model_states.pt"]
    if stage >= 1 or bf16:
        prefix = "bf16_" if bf16 else ""
        files += [
            tag_dir / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
            for r in range(world_size)
        ]
    return files


def _read_deepspeed_checkpoint(path: Path, world_size: int | None, zero_stage: int) -> dict:
    """Rank 0's model-state file of a DeepSpeed checkpoint (it holds Lightning's client state),
    after checking that every shard is there and the launch shape matches."""
    latest = path / "latest"
    tag = latest.read_text().strip() if latest.is_file() else ""
    tag_dir = path / tag if tag else path
    if not tag or not tag_dir.is_dir():
        raise UserError(
            f"checkpoint {path} is a directory but not a DeepSpeed checkpoint (no `latest` file "
            f"naming a tag directory); pass resume=<a checkpoint> or resume=never"
        )
    candidates = [
        tag_dir / "mp_rank_00_model_states.pt",
        tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    ]
    rank0 = next((f for f in candidates if f.is_file()), None)
    if rank0 is None:
        raise UserError(
            f"checkpoint {path} is incomplete: no model states of rank 0 in {tag_dir}; pass "
            f"resume=<an older checkpoint> or resume=never"
        )
    ckpt = _load(rank0, path, deepspeed=True)
    saved_world = ckpt.get("dp_world_size")
    ds_config = ckpt.get("ds_config") or {}
    saved_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if saved_world is None:
        raise UserError(
            f"checkpoint {path} lacks DeepSpeed's dp_world_size: not a DeepSpeed checkpoint"
        )
    missing = [
        f.name
        for f in deepspeed_shard_files(tag_dir, int(saved_world), ds_config)
        if not f.is_file()
    ]
    if missing:
        raise UserError(
            f"checkpoint {path} is incomplete: missing shard(s) {', '.join(missing)} of a "
            f"{saved_world}-process ZeRO-{saved_stage} checkpoint; copy every rank's files into "
            f"{tag_dir}, or pass resume=<an older checkpoint>"
        )
    # Every shard is there: now their bytes, then (DeepSpeed unpickles its shards itself,
    # without torch's restrictions) each one read weights-only first.
    verify_resumable(path)
    check_deepspeed_files_loadable(tag_dir, path)
    if world_size is not None and int(saved_world) != world_size:
        raise UserError(
            f"checkpoint {path} was written by {saved_world} processes but this launch has "
            f"{world_size} and elastic_resume=false; pass elastic_resume=true (converts it to "
            f"DeepSpeed's universal format once) or relaunch with {saved_world} processes"
        )
    if saved_stage != zero_stage:
        raise UserError(
            f"checkpoint {path} was written with ZeRO stage {saved_stage} but this run uses stage "
            f"{zero_stage}; resume with strategy=deepspeed_zero{saved_stage} (or its offload "
            f"variant), or pass resume=never"
        )
    return ckpt
