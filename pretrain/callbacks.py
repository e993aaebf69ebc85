"""Training callbacks: throughput (tokens/s) and plain progress lines for non-interactive runs."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class ThroughputMonitor(L.Callback):
    """Logs `train/tokens_per_sec` (real, non-padding tokens over all processes), samples/s and
    tokens seen; without a progress bar it also prints one line per logging interval with the ETA,
    which reads well in SLURM output files (no carriage returns)."""

    def __init__(self, log_every_n_steps: int, world_size: int, print_progress: bool):
        self.every = log_every_n_steps
        self.world_size = world_size
        self.print_progress = print_progress
        self._tokens = 0  # real tokens on this process since the last report
        self._samples = 0
        self._tokens_seen = 0.0
        self._t0: float | None = None
        self._start_step = 0
        self._start_time = 0.0
        self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._start_time = time.perf_counter()
        self._start_step = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        self._tokens += int(batch["attention_mask"].sum())
        self._samples += batch["input_ids"].size(0)
        step = trainer.global_step
        # global_step counts optimizer steps; report once per interval, on the micro-batch that
        # completed the step (later micro-batches of the next step see the same global_step).
        completed_step = step != self._last_step
        self._last_step = step
        if not completed_step or step % self.every:
            return
        now = time.perf_counter()
        elapsed = now - self._t0
        tokens_per_sec = self._tokens * self.world_size / elapsed
        self._tokens_seen += self._tokens * self.world_size
        pl_module.log_dict(
            {
                "train/tokens_per_sec": tokens_per_sec,
                "train/samples_per_sec": self._samples * self.world_size / elapsed,
                "train/tokens_seen": self._tokens_seen,
            },
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
        if self.print_progress:
            done = step - self._start_step
            eta = (now - self._start_time) / max(done, 1) * (trainer.max_steps - step)
            loss = trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))
            rank_zero_info(
                f"step {step}/{trainer.max_steps}  loss {float(loss):.4f}  "
                f"{tokens_per_sec:,.0f} tokens/s  eta {_hms(eta)}"
            )
        self._tokens = self._samples = 0
        self._t0 = now

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:  # validation time is not training time
            self._t0 = time.perf_counter()
        if self.print_progress and not trainer.sanity_checking:
            m = trainer.callback_metrics
            if "val/mlm_acc" in m:
                what = (
                    "validation"
                    if trainer.training or trainer.state.fn == "fit"
                    else "final evaluation"
                )
                rank_zero_info(
                    f"{what} at step {trainer.global_step}: loss {float(m['val/loss']):.4f}  "
                    f"mlm_acc {float(m['val/mlm_acc']):.4f}  nsp_acc {float(m['val/nsp_acc']):.4f}"
                )


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ExitAfterSteps(L.Callback):
    """Ends the launch once `global_step` reaches `step` (the run itself is not finished)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
