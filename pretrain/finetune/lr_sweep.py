"""`optim.lr=auto` of `bert-finetune`: a short learning-rate sweep that picks the run's peak lr.

Each learning rate of `optim.lr_auto_grid` trains one trial: a copy of the untouched encoder with
the run's head initialization, dropout and data order (the same seed), for `optim.lr_auto_epochs`
of the training split, under the run's schedule compressed to the trial (the same warm-up share,
decay to the trial's last step), then scored on the dev split with the task's metric. The best
trial wins, trials whose dev predictions are degenerate (`pretrain/finetune/degenerate.py`:
one label, or no entities) ranking below every other; ties go to the earlier lr of the grid. The
full run then starts from scratch with that lr, exactly as `optim.lr=<chosen>` would.

Cost: len(grid) × lr_auto_epochs epochs of training, plus a dev evaluation per trial (the default
4 × 0.5 = two epochs). The trials run with no checkpoint and no logger, in a temporary directory
made inside the run directory (`.lr_auto-XXXX`, one per process) that is removed afterwards; the
run directory keeps only the record, `lr_auto.json` (also under `lr_auto` in metrics.json).
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from pretrain.config import ScheduleConfig
from pretrain.finetune import degenerate
from pretrain.finetune.config import FinetuneOptimConfig

RECORD = "lr_auto.json"
"""The sweep's record in the run directory: grid, per-trial scores, chosen lr, seconds."""
SCRATCH_PREFIX = ".lr_auto-"

TrainTrial = Callable[[float, int, ScheduleConfig, Path], tuple[dict[str, float], list[dict]]]
"""(lr, optimizer steps, schedule, scratch directory) -> (dev metrics, dev prediction rows as
`pretrain.finetune.module.evaluate` writes them)."""


def trial_length(
    epochs: float, batches_per_epoch: int, schedule: ScheduleConfig, run_steps: int
) -> tuple[int, ScheduleConfig]:
    """Optimizer steps of one trial, and the run's schedule compressed to them: a warm-up given
    in steps (`schedule.warmup_steps`) keeps its share of the run; a `warmup_fraction` applies
    as it is."""
    steps = max(1, math.ceil(epochs * batches_per_epoch))
    if schedule.warmup_steps is not None:
        # floor: warmup_steps < run_steps (optimizer_steps refuses the rest) keeps it < steps
        schedule = replace(schedule, warmup_steps=schedule.warmup_steps * steps // run_steps)
    return steps, schedule


def best_trial(trials: list[dict], metric: str) -> int:
    """Index of the chosen trial: not degenerate first, then the higher dev score; `max` keeps
    the first of equals, i.e. the earlier lr of the grid."""
    return max(range(len(trials)), key=lambda i: (not trials[i]["degenerate"], trials[i][metric]))


def sweep(
    optim: FinetuneOptimConfig,
    metric: str,
    task_type: str,
    run_dir: Path,
    steps: int,
    schedule: ScheduleConfig,
    train_trial: TrainTrial,
) -> dict:
    """Train one trial per lr of `optim.lr_auto_grid`; print the table, write `lr_auto.json`, and
    return the record (`grid`, `scores`, `chosen`, `seconds`, ...)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # New and unique (one per process under DDP): the only directory the sweep removes.
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=run_dir))
    started = time.perf_counter()
    trials: list[dict] = []
    try:
        for lr in optim.lr_auto_grid:
            begun = time.perf_counter()
            metrics, rows = train_trial(lr, steps, schedule, scratch)
            trials.append(
                {
                    "lr": lr,
                    metric: metrics[metric],
                    "degenerate": bool(degenerate.check(task_type, rows)["degenerate"]),
                    "seconds": round(time.perf_counter() - begun, 2),
                }
            )
            gc.collect()  # the trial's Trainer and module refer to each other: free them now
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = {
        "grid": list(optim.lr_auto_grid),
        "metric": f"dev {metric}",
        "epochs": optim.lr_auto_epochs,
        "steps": steps,
        "scores": trials,
        "chosen": trials[best_trial(trials, metric)]["lr"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    _report(record, metric, run_dir)
    return record


def table_lines(record: dict, metric: str) -> list[str]:
    """The sweep as printed: one row per lr (dev metric, degenerate?, seconds), then the choice."""
    lines = [
        f"lr auto: {len(record['grid'])} trials of {record['steps']} steps "
        f"({record['epochs']:g} epoch) each, picked by dev {metric}",
        f"  {'lr':>9}  {'dev ' + metric:>14}  degenerate  seconds",
    ]
    for t in record["scores"]:
        mark = "  <- chosen" if t["lr"] == record["chosen"] else ""
        lines.append(
            f"  {t['lr']:>9.2g}  {t[metric]:>14.4f}  {'yes' if t['degenerate'] else 'no':>10}"
            f"  {t['seconds']:>7.1f}{mark}"
        )
    if all(t["degenerate"] for t in record["scores"]):
        lines.append(
            "  every lr of the grid gave degenerate dev predictions; the run uses the best "
            "score's: try other optim.lr_auto_grid values or a longer optim.lr_auto_epochs"
        )
    lines.append(
        f"  sweep took {record['seconds']:.1f} s; the run now trains at lr {record['chosen']:g}"
    )
    return lines


@rank_zero_only
def _report(record: dict, metric: str, run_dir: Path) -> None:
    (run_dir / RECORD).write_text(json.dumps(record, indent=2))
    print("\n".join(table_lines(record, metric)), flush=True)
