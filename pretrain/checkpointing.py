"""Atomic checkpoint files, and finding and validating the checkpoint a run resumes from."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from pretrain.errors import UserError

LAST = "last.ckpt"


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
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        # Make the rename itself durable.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def find_resume_checkpoint(resume: str, checkpoint_dir: Path) -> Path | None:
    """`auto`: the run's last checkpoint if there is one; `never`: None; else an explicit path."""
    if resume == "never":
        return None
    if resume == "auto":
        last = checkpoint_dir / LAST
        return last if last.exists() else None
    path = Path(resume)
    if not path.exists():
        raise UserError(f"resume={resume!r}: no such checkpoint; give an existing .ckpt, 'auto' or 'never'")
    return path


def validate_checkpoint(path: Path, model_hparams: dict) -> int:
    """Read a checkpoint's metadata, check it belongs to this model; return its global step.

    Fails with a message naming the checkpoint when it is truncated, not a training checkpoint,
    or was trained with a different architecture.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, wrong format, ...: all mean "unusable"
        raise UserError(
            f"checkpoint {path} is corrupt or partial ({type(err).__name__}: {err}); delete it to "
            f"start over, or pass resume=<an older checkpoint>"
        ) from None
    missing = [k for k in ("state_dict", "global_step", "hyper_parameters") if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {missing}: it is not a `bert-pretrain` checkpoint")
    saved = ckpt["hyper_parameters"].get("model", {})
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, config {v!r}"
             for k, v in model_hparams.items() if k in saved and saved[k] != v]
    if diffs:
        raise UserError(
            f"checkpoint {path} is of another model ({'; '.join(diffs)}); use a new run name "
            f"(name=...) or resume=never"
        )
    return int(ckpt["global_step"])


class RNGStateCheckpoint(Callback):
    """Save and restore the random-number generators, so dropout after a resume draws what the
    uninterrupted run would have drawn. (Masks need no state: they derive from sample keys.)"""

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, lists and numbers only, so checkpoints load with torch's weights_only=True.
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
