"""Stop a launch after a number of optimizer steps, checkpointing there: for time-sliced jobs and
resume drills (`trainer.exit_after_steps`)."""

from __future__ import annotations

import lightning as L


class ExitAfterSteps(L.Callback):
    """Ends the launch once `global_step` reaches `step` (the run itself is not finished)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
