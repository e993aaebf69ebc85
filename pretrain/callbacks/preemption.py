"""Preemption: on a signal, checkpoint at the next optimizer-step boundary, requeue, and exit.

SLURM sends SIGUSR1 ahead of a time limit or preemption (`#SBATCH --signal=SIGUSR1@90`). The
handler only sets a flag: saving inside the handler would catch the model between a micro-batch and
its optimizer step, and a resumed run would then not repeat the uninterrupted one exactly. At each
step boundary the ranks agree (a max-reduction of the flag, so all save at the same step even when
the signal reaches them at different moments), write the checkpoint the normal way, and stop; rank
0 asks SLURM to requeue the job, which restarts with the same job id and run directory and resumes
from that checkpoint (`resume=auto`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class PreemptionCheckpoint(L.Callback):
    def __init__(self, last_checkpoint: Path, signum: int = signal.SIGUSR1, requeue: bool = True):
        self.last_checkpoint = last_checkpoint
        self.signum = signum
        self.requeue = requeue
        self.requested = False
        self._last_step = -1
        self._previous_handler = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous_handler = signal.signal(self.signum, self._handler)
        self._last_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # inside a gradient-accumulation cycle: not a step boundary
        self._last_step = trainer.global_step
        flag = torch.tensor(float(self.requested), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="max")) == 0:
            return
        rank_zero_info(
            f"preemption signal: checkpointing at step {trainer.global_step} and stopping"
        )
        trainer.save_checkpoint(self.last_checkpoint)
        trainer.should_stop = True
        if self.requeue and trainer.global_rank == 0:
            requeue_slurm_job()


def requeue_slurm_job() -> None:
    """`scontrol requeue` this job, if it runs under SLURM (the job keeps its id)."""
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        rank_zero_info(f"requeued SLURM job {job_id}")
    else:
        rank_zero_warn(f"could not requeue SLURM job {job_id}: {result.stderr.strip()}")
