"""Training callbacks: throughput (tokens/s, model FLOP/s, MFU) and plain progress lines for
non-interactive runs."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from pretrain.callbacks.budget import TimeBudget
from pretrain.model import BertConfig, flops_per_token

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched in order
# against `torch.cuda.get_device_name()`: the PCIe H100 is clocked lower than the SXM one.
KNOWN_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def detect_peak_tflops(device_name: str | None) -> float | None:
    """bf16 dense peak of a known GPU by name (e.g. "NVIDIA H100 80GB HBM3"), else None."""
    if device_name:
        for key, tflops in KNOWN_PEAK_TFLOPS:
            if key in device_name:
                return tflops
    return None


def resolve_peak_tflops(configured: float | None, accelerator: str) -> float | None:
    """`trainer.peak_tflops` if set; else the known peak of this process's GPU; None on CPU."""
    if configured is not None:
        return configured
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return detect_peak_tflops(torch.cuda.get_device_name())
    return None


class ThroughputMonitor(L.Callback):
    """Logs `train/tokens_per_sec` (real, non-padding tokens over all processes), samples/s and
    tokens seen; given the model config also `train/model_tflops_per_sec` (training FLOPs of the
    real tokens, `pretrain.model.flops_per_token` at each batch's length and masked fraction) and,
    given a peak, `train/mfu`. Without a progress bar it also prints one line per logging interval
    with the ETA (given a wall-clock budget, capped by what is left of it), which reads well in
    SLURM output files (no carriage returns)."""

    def __init__(
        self,
        log_every_n_steps: int,
        world_size: int,
        print_progress: bool,
        model_cfg: BertConfig | None = None,
        peak_tflops: float | None = None,
        budget: TimeBudget | None = None,
    ):
        self.every = log_every_n_steps
        self.world_size = world_size
        self.print_progress = print_progress
        self.model_cfg = model_cfg
        self.peak_tflops = peak_tflops  # per device; None: no MFU
        self.budget = budget  # the run's wall-clock budget, if any: it ends the run sooner
        self._tokens = 0  # real tokens on this process since the last report
        self._flops = 0.0  # their model FLOPs (forward + backward)
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
        if self.model_cfg is None:
            self._tokens += int(batch["attention_mask"].sum())
        else:
            # One device sync for both counts: real tokens and masked (predicted) positions.
            real, masked = torch.stack(
                [batch["attention_mask"].sum(), (batch["labels"] != -100).sum()]
            ).tolist()
            self._tokens += real
            T = batch["input_ids"].size(1)
            self._flops += real * flops_per_token(self.model_cfg, T, masked / max(real, 1))
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
        metrics = {
            "train/tokens_per_sec": tokens_per_sec,
            "train/samples_per_sec": self._samples * self.world_size / elapsed,
            "train/tokens_seen": self._tokens_seen,
        }
        mfu_text = ""
        if self.model_cfg is not None:
            # Rank 0's FLOPs × world size: ranks see batches of the same shape distribution.
            tflops = self._flops * self.world_size / elapsed / 1e12
            metrics["train/model_tflops_per_sec"] = tflops
            mfu_text = f"  {tflops:.3g} TFLOP/s"
            if self.peak_tflops is not None:
                metrics["train/mfu"] = tflops / (self.peak_tflops * self.world_size)
                mfu_text += f"  MFU {metrics['train/mfu']:.1%}"
        pl_module.log_dict(
            metrics,
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
        if self.print_progress:
            done = step - self._start_step
            eta = (now - self._start_time) / max(done, 1) * (trainer.max_steps - step)
            if self.budget is not None:
                eta = min(eta, max(0.0, self.budget.budget_s - self.budget.elapsed_s()))
            loss = trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))
            rank_zero_info(
                f"step {step}/{trainer.max_steps}  loss {float(loss):.4f}  "
                f"{tokens_per_sec:,.0f} tokens/s{mfu_text}  eta {_hms(eta)}"
            )
        self._tokens = self._samples = 0
        self._flops = 0.0
        self._t0 = now

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` of non-training work (e.g. a downstream evaluation) out of tokens/s and
        the ETA: move the throughput window and the ETA's origin past it."""
        if self._t0 is not None:
            self._t0 += seconds
            self._start_time += seconds

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
