"""`bert-pretrain` runs for tests: one launch in a subprocess (`python -m pretrain.train
experiment=debug`) and the per-step training losses its CSV logs hold."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path


def pretrain(env: dict, work: Path, data: Path, *overrides: str, check: bool = True):
    """`bert-pretrain experiment=debug` on the prepared data `data`, logging every step; raises
    with its output when it fails (unless `check` is off)."""
    cmd = [
        sys.executable,
        "-m",
        "pretrain.train",
        "experiment=debug",
        f"work_dir={work}",
        f"data.dir={data}",
        "trainer.log_every_n_steps=1",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def train_losses(run_dir: Path) -> dict[int, float]:
    """`{step: train/loss}` of every launch of the run (its csv/version_*/metrics.csv)."""
    losses = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses
