"""Callbacks that guard the training state: the loss of every step over the whole global batch
(stopping on NaN/inf before a bad checkpoint is written), and the random-number generators saved
and restored with each checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from pretrain.errors import UserError


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss."""


class LossMonitor(Callback):
    """Logs `train/loss_global`, the mean loss of each optimizer step over its whole global batch
    (every micro-batch of every process), and stops the run when it is NaN or infinite.

    (`train/loss` is the loss of one process's last micro-batch.) The check runs after the step,
    on every rank alike (the value is all-reduced), and before checkpoints of that step are written
    (Lightning runs checkpoint callbacks last), so the last checkpoint on disk is a good one.
    """

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self._sum = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Lightning's outputs["loss"] is already divided by the accumulation steps.
        loss = outputs["loss"].detach().float() if isinstance(outputs, dict) else None
        if loss is None:
            return
        self._sum = loss if self._sum is None else self._sum + loss
        if trainer.global_step == self._last_step:
            return  # accumulating: the optimizer step is not complete yet
        self._last_step = trainer.global_step
        total = trainer.strategy.reduce(self._sum, reduce_op="sum")
        mean = total / trainer.world_size
        self._sum = None
        if not torch.isfinite(mean):
            raise NonFiniteLossError(
                f"the loss became {float(mean)} at step {trainer.global_step}: training diverged "
                f"(learning rate too high, or fp16 overflow); the last checkpoint written before "
                f"this step is intact: lower optim.lr, use trainer.precision=bf16-mixed or 32, "
                f"and resume"
            )
        pl_module.log("train/loss_global", mean, on_step=True, on_epoch=False)


class RNGStateCheckpoint(Callback):
    """Save and restore the random-number generators, so dropout after a resume draws what the
    uninterrupted run would have drawn. (Masks need no state: they derive from sample keys.)"""

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, lists and numbers only, so checkpoints load with torch's weights_only=True.
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
