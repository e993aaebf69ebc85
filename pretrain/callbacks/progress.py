"""The interactive progress bar: optimizer steps out of `trainer.max_steps`, tokens/s and the ETA.

Only for terminals (`bert-pretrain` enables it when stdout is a TTY). Batch jobs get plain lines
from `ThroughputMonitor` instead: a bar redrawn with carriage returns fills SLURM output files.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, counting optimizer steps instead of batches of an epoch.

    Training reads an endless sample stream (no epoch length, so Lightning's bar has no total and
    no ETA); the run's length is `max_steps`. The bar starts at the restored step on a resume, so
    the remaining-time column (rich's estimate from recent speed) is right from the first update.
    Besides the progress-bar metrics (`train/loss`) it shows `train/tokens_per_sec`, which
    `ThroughputMonitor` logs every `log_every_n_steps`.
    """

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps

    def _get_train_description(self, current_epoch: int) -> str:
        return "pretraining"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None:
            # reset, not update: a jump from 0 to the restored step would count as speed.
            self.progress.reset(
                self.train_progress_bar_id,
                total=trainer.max_steps,
                completed=trainer.global_step,
                description=self._get_train_description(trainer.current_epoch),
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        tokens = trainer.callback_metrics.get("train/tokens_per_sec")
        if tokens is not None:
            items["tokens/s"] = f"{float(tokens):,.0f}"
        return items
