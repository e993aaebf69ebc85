"""A wall-clock training budget (`trainer.max_time_minutes`), as academic-budget-bert and cramming
use: the learning-rate schedule is keyed to the fraction of the budget spent, so it ends when the
budget does whatever the machine's speed, and training stops there.

One clock for all processes: rank 0's elapsed time is broadcast every step, so every rank sets the
same learning rate and stops at the same step. The time spent so far is saved in checkpoints, so a
resumed (or requeued) run continues the same budget. Time-keyed runs are not bit-reproducible: the
step at which the budget ends depends on the machine's speed.
"""

from __future__ import annotations

import time

import lightning as L


class TimeBudget(L.Callback):
    """Tracks the budget; `fraction` (elapsed / budget, in [0, 1]) feeds the LR schedule."""

    def __init__(self, minutes: float):
        if minutes <= 0:
            raise ValueError(f"trainer.max_time_minutes must be positive, got {minutes}")
        self.budget_s = 60.0 * minutes
        self.elapsed_before_s = 0.0  # spent by earlier launches (restored from the checkpoint)
        self._launch_start: float | None = None
        self.fraction = 0.0
        self.exhausted = False

    def elapsed_s(self) -> float:
        if self._launch_start is None:
            return self.elapsed_before_s
        return self.elapsed_before_s + time.monotonic() - self._launch_start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._launch_start = time.monotonic()
        self._sync(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Just before the optimizer step, hence before the scheduler reads `fraction` for the next
        # step's rate; once per optimizer step, not per micro-batch.
        self._sync(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.exhausted:
            trainer.should_stop = True

    def _sync(self, trainer: L.Trainer) -> None:
        elapsed = float(trainer.strategy.broadcast(self.elapsed_s(), src=0))
        self.fraction = min(1.0, elapsed / self.budget_s)
        if self.fraction >= 1.0:
            self.exhausted = True
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"elapsed_s": self.elapsed_s(), "budget_s": self.budget_s}

    def load_state_dict(self, state_dict: dict) -> None:
        self.elapsed_before_s = float(state_dict["elapsed_s"])
        self.fraction = min(1.0, self.elapsed_before_s / self.budget_s)
