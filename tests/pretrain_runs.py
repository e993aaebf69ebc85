"""`bert-pretrain` runs for tests: one launch in a subprocess (`python -m pretrain.train
experiment=debug`), the per-step training losses its CSV logs hold, and the environment and
`torchrun` command line of multi-process launches on the CPU."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_env() -> dict[str, str]:
    """The apps from this checkout, quiet progress bars, DeepSpeed's CPU accelerator."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH", "")]))
    e["TOKENIZERS_PARALLELISM"] = "false"
    e["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    e["DS_ACCELERATOR"] = "cpu"
    return e


def torchrun(nproc: int, *args: str) -> list[str]:
    """`torchrun` of `nproc` local processes on a free loopback port, then `args`."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]  # fmt: skip
