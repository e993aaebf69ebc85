"""Several processes on one machine: `torchrun` launching `bert-pretrain` with DDP on the CPU
(gloo); and the samples an interrupted-and-resumed run sees, with 1 process and with 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.data import TrainStreamSampler
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.multiprocess
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
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [  # each with its checksum
        "last.ckpt",
        "last.ckpt.sha256",
        "step0000006.ckpt",
        "step0000006.ckpt.sha256",
    ]
    assert proc.stdout.count("pretraining finished") == 1  # the summary is printed by rank 0 only


def recorded_run(env, work: Path, data: Path, nprocs: int, launch: str, *overrides: str) -> None:
    """One launch of `bert-pretrain` under tests/sample_recorder.py (1 process, or torchrun)."""
    script = str(REPO / "tests" / "sample_recorder.py")
    launcher = [sys.executable, script] if nprocs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nprocs),
        "--master_addr", "127.0.0.1", "--master_port", "29533", script, "strategy=ddp",
    ]  # fmt: skip
    cmd = [*launcher, "experiment=debug", f"work_dir={work}", f"data.dir={data}",
           f"trainer.devices={nprocs}", "trainer.max_steps=8", "trainer.val_check_interval=8",
           "logger=tensorboard", *overrides]  # fmt: skip
    env = dict(env, SAMPLE_LOG_DIR=str(work), SAMPLE_LOG_LAUNCH=launch)
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def keys(work: Path, launch: str, rank: int, steps: int, per_rank: int) -> list[tuple[int, int]]:
    """The samples rank `rank` trained on in `launch` (the loader fetched one micro-batch ahead)."""
    lines = (work / f"{launch}-rank{rank}.jsonl").read_text().splitlines()
    assert len(lines) >= steps * per_rank, (launch, rank, len(lines))
    return [tuple(json.loads(line)) for line in lines[: steps * per_rank]]


@pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_resumed_run_sees_the_same_samples_as_an_uninterrupted_one(
    prepared_english, tmp_path, app_env, nprocs
):
    """Interrupted after 3 of 8 steps and resumed: every rank continues with the next unseen
    sample, so the sequence of (epoch, index) keys equals the uninterrupted run's."""
    per_rank = 8 // nprocs  # experiment=debug: global batch 8
    recorded_run(app_env, tmp_path, prepared_english, nprocs, "whole", "name=whole")
    recorded_run(app_env, tmp_path, prepared_english, nprocs, "cut1", "name=cut",
                 "trainer.exit_after_steps=3")  # fmt: skip
    recorded_run(app_env, tmp_path, prepared_english, nprocs, "cut2", "name=cut")
    whole, resumed = [], []
    for rank in range(nprocs):
        whole.append(keys(tmp_path, "whole", rank, 8, per_rank))
        resumed.append(keys(tmp_path, "cut1", rank, 3, per_rank) +
                       keys(tmp_path, "cut2", rank, 5, per_rank))  # fmt: skip
        assert resumed[rank] == whole[rank], f"rank {rank}"

    # Step by step, the ranks' shares together are the one stream a single process would read,
    # with no sample repeated within the epoch.
    manifest = json.loads((prepared_english / "manifest.json").read_text())
    num_samples = manifest["splits"]["train"]["num_pairs"]
    stream = iter(TrainStreamSampler(num_samples, 8, rank=0, world_size=1, seed=1234))
    single = [next(stream) for _ in range(8 * 8)]
    by_step = [key for step in range(8) for rank in range(nprocs)
               for key in whole[rank][step * per_rank : (step + 1) * per_rank]]  # fmt: skip
    assert by_step == single
    assert num_samples > 64 and len(set(single)) == 64 and {e for e, _ in single} == {0}

    # Only rank 0 logs: per launch one version folder, its event files written by one process
    # (`events.out.tfevents.<time>.<host>.<pid>.<n>`; the final validation reopens the writer).
    for run, launches in (("whole", 1), ("cut", 2)):
        versions = sorted((tmp_path / "runs" / run / "tensorboard").glob("version_*"))
        assert len(versions) == launches
        for version in versions:
            pids = {p.name.split(".")[-2] for p in version.glob("events.out.tfevents.*")}
            assert len(pids) == 1, sorted(version.iterdir())
