"""Waiting on a real SLURM scheduler in tests (a one-node cluster: slurm/cluster-up.sh): whether one
is up, and polling until a job or condition is done."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO


def require_cluster() -> None:
    """Skip the calling test (fail under REQUIRE_SLURM, as in CI) unless a cluster is running."""
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


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` every half second; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def job_state(job: str) -> str:
    """PENDING, RUNNING, ... or "" once the job has left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()
