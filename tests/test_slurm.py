"""`slurm/` scripts against a real SLURM scheduler (a one-node cluster: slurm/cluster-up.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    up = (
        shutil.which("sbatch")
        and subprocess.run(
            [str(REPO / "slurm" / "cluster-up.sh"), "--check"], capture_output=True
        ).returncode
        == 0
    )
    if not up:
        if os.environ.get("REQUIRE_SLURM"):  # CI starts the cluster: its absence is a failure
            pytest.fail("no running SLURM cluster; run slurm/cluster-up.sh (as root)")
        pytest.skip("no running SLURM cluster (start one with slurm/cluster-up.sh)")


def sbatch(tmp_path, env, *args: str) -> subprocess.CompletedProcess:
    cmd = ["sbatch", "--wait", "--parsable", f"--chdir={tmp_path}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_pretrain_sbatch_runs_two_tasks_and_names_the_run_by_job_id(
    prepared_english, tmp_path, app_env
):
    env = dict(app_env, PYTHON=sys.executable)
    proc = sbatch(tmp_path, env, "--ntasks-per-node=2", "--cpus-per-task=1",
                  str(REPO / "slurm" / "pretrain.sbatch"), "experiment=debug",
                  f"work_dir={tmp_path}", f"data.dir={prepared_english}", "trainer.max_steps=4",
                  "trainer.val_check_interval=4")  # fmt: skip
    job = proc.stdout.strip().split(";")[0]
    log = next(tmp_path.glob("slurm-*.out"), None)
    output = log.read_text() if log else ""
    assert proc.returncode == 0, proc.stderr + output[-4000:]
    run = tmp_path / "runs" / f"slurm-{job}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4
    assert "global batch 8" in output and "accumulation 1 × 2" in output  # 2 ranks, micro-batch 4
    assert output.count("pretraining finished") == 1
