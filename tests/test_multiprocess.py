"""Several processes on one machine: `torchrun` launching `bert-pretrain` with DDP on the CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.multiprocess, pytest.mark.e2e]


def test_torchrun_ddp_two_processes_train_and_checkpoint_once(prepared_english, tmp_path, app_env):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", "29531",
        "-m", "pretrain.train", "experiment=debug", "strategy=ddp", "trainer.devices=2",
        f"work_dir={tmp_path}", f"data.dir={prepared_english}", "name=ddp", "trainer.max_steps=6",
        "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    # Global batch 8 over 2 processes of micro-batch 4: no accumulation.
    assert "micro-batch 4 × accumulation 1 × 2 = global batch 8" in proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step0000006.ckpt",
    ]
    assert proc.stdout.count("pretraining finished") == 1  # the summary is printed by rank 0 only
