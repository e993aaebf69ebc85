"""`slurm/` scripts against a real SLURM scheduler (a one-node cluster: slurm/cluster-up.sh)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.slurm_jobs import job_state, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess, pytest.mark.usefixtures("slurm_cluster")]


def sbatch(tmp_path, env, *args: str) -> tuple[str, int]:
    """Submit, wait for the job to leave the queue, return (job id, exit code).

    Polls `squeue` itself: `sbatch --wait` backs off to half-minute polls and notices late."""
    cmd = ["sbatch", "--parsable", f"--chdir={tmp_path}", *args]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    job = job.strip().split(";")[0]
    wait_for(lambda: not job_state(job), 600, f"job {job} to finish")
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    exit_code = int(info.split("ExitCode=")[1].split(":")[0]) if "ExitCode=" in info else -1
    return job, exit_code


def test_pretrain_sbatch_runs_two_tasks_and_names_the_run_by_job_id(
    prepared_english, tmp_path, app_env
):
    env = dict(app_env, PYTHON=sys.executable)
    job, exit_code = sbatch(tmp_path, env, "--ntasks-per-node=2", "--cpus-per-task=1",
                  str(REPO / "slurm" / "pretrain.sbatch"), "experiment=debug",
                  f"work_dir={tmp_path}", f"data.dir={prepared_english}", "trainer.max_steps=4",
                  "trainer.val_check_interval=4")  # fmt: skip
    log = next(tmp_path.glob("slurm-*.out"), None)
    output = log.read_text() if log else ""
    assert exit_code == 0, output[-4000:]
    run = tmp_path / "runs" / f"slurm-{job}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4
    assert "global batch 8" in output and "accumulation 1 × 2" in output  # 2 ranks, micro-batch 4
    assert output.count("pretraining finished") == 1


def losses(run) -> dict[int, float]:
    import csv

    out = {}
    for path in sorted(run.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            out.update({int(r["step"]): float(r["train/loss_global"])
                        for r in csv.DictReader(f) if r.get("train/loss_global")})  # fmt: skip
    return out


def test_preempted_job_checkpoints_requeues_and_ends_like_an_uninterrupted_one(
    prepared_english, tmp_path, app_env
):
    """SIGUSR1 (as `--signal=USR1@90` sends before a time limit): checkpoint at the next step
    boundary, requeue, resume with no flag, and finish with the same per-step losses (fp32, exact)."""
    env = dict(app_env, PYTHON=sys.executable)
    args = ["--ntasks-per-node=2", "--cpus-per-task=1", str(REPO / "slurm" / "pretrain.sbatch"),
            "experiment=debug", f"work_dir={tmp_path}", f"data.dir={prepared_english}",
            "trainer.max_steps=80", "trainer.val_check_interval=1000",
            "trainer.checkpoint_every_n_steps=1000", "trainer.log_every_n_steps=1"]  # fmt: skip
    _, exit_code = sbatch(tmp_path, dict(env, RUN_NAME="whole"), *args)
    assert exit_code == 0

    submit = ["sbatch", "--parsable", f"--chdir={tmp_path}", "--output=preempted-%j.out", *args]
    proc = subprocess.run(submit, env=dict(env, RUN_NAME="preempted"), capture_output=True,
                          text=True, check=True)  # fmt: skip
    job = proc.stdout.strip().split(";")[0]
    log = tmp_path / f"preempted-{job}.out"
    wait_for(lambda: log.is_file() and "step 10/80" in log.read_text(), 240, "step 10")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_for(lambda: "requeued SLURM job" in log.read_text(), 120, "the requeue")
    # SLURM holds a requeued job for a while (BeginTime) before it is eligible again; release it
    # now rather than make the test wait, as an administrator could.
    wait_for(lambda: job_state(job) == "PENDING", 120, "the job to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_for(lambda: not job_state(job), 400, "the requeued job to finish")

    output = log.read_text()
    assert "preemption signal: checkpointing at step" in output
    assert "requeued SLURM job" in output and "(restart 1)" in output
    assert "resuming from" in output and output.count("pretraining finished at step 80") == 1
    preempted, reference = (
        losses(tmp_path / "runs" / "preempted"),
        losses(tmp_path / "runs" / "whole"),
    )
    assert len(reference) == 80 and preempted == reference


def test_finetune_sbatch_runs_bert_finetune_and_writes_its_metrics(
    tiny_model, sequence_files, tmp_path, app_env
):
    env = dict(app_env, PYTHON=sys.executable)
    job, exit_code = sbatch(tmp_path, env, str(REPO / "slurm" / "finetune.sbatch"),
                            "task=sequence_classification", "task.name=keyword",
                            f"model={tiny_model}", f"work_dir={tmp_path}", "logger=none",
                            "trainer.accelerator=cpu", "batch_size=16", "task.max_seq_length=32",
                            "trainer.max_epochs=1", *sequence_files)  # fmt: skip
    log = tmp_path / f"slurm-bert-finetune-{job}.out"
    output = log.read_text() if log.is_file() else ""
    assert exit_code == 0, output[-4000:]
    run = tmp_path / "finetune" / f"slurm-{job}"  # keyed by the job id, like pretraining
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["task"] == "keyword"
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "mcc"}
    assert len((run / "test_predictions.jsonl").read_text().splitlines()) == 64
    assert "fine-tuned keyword (pretrained, seed 1234)" in output


def test_more_tasks_than_devices_fails_with_the_fix(prepared_english, tmp_path, app_env):
    """Two tasks, but trainer.devices=1 forced on the command line (it overrides the script's)."""
    env = dict(app_env, PYTHON=sys.executable)
    job, exit_code = sbatch(tmp_path, env, "--ntasks-per-node=2", "--cpus-per-task=1",
                            str(REPO / "slurm" / "pretrain.sbatch"), "experiment=debug",
                            f"work_dir={tmp_path}", f"data.dir={prepared_english}",
                            "trainer.devices=1")  # fmt: skip
    output = (tmp_path / f"slurm-bert-pretrain-{job}.out").read_text()
    assert exit_code != 0
    assert "error: SLURM started 2 tasks on 1 node(s)" in output, output[-4000:]
    assert "--ntasks-per-node=1" in output and "trainer.devices=2 trainer.num_nodes=1" in output
    assert "Traceback" not in output


def test_requeued_job_on_fewer_tasks_resumes_a_zero_checkpoint_elastically(
    prepared_english, tmp_path, app_env
):
    """A 2-task ZeRO-2 job stops at step 4; the job that comes back under the same RUN_NAME has
    1 task: it resumes through the universal conversion and ends like an uninterrupted 2-task job."""
    env = dict(app_env, PYTHON=sys.executable, DS_ACCELERATOR="cpu")
    common = [str(REPO / "slurm" / "pretrain.sbatch"), "experiment=debug",
              f"work_dir={tmp_path}", f"data.dir={prepared_english}", "strategy=deepspeed_zero2",
              "trainer.precision=32", "model.hidden_dropout=0", "model.attention_dropout=0",
              "trainer.max_steps=8", "trainer.val_check_interval=8",
              "trainer.checkpoint_every_n_steps=4", "trainer.log_every_n_steps=1"]  # fmt: skip
    two = ["--ntasks-per-node=2", "--cpus-per-task=1"]
    runs = (("whole", two, []), ("elastic", two, ["trainer.exit_after_steps=4"]),
            ("elastic", ["--ntasks-per-node=1"], []))  # fmt: skip
    for run_name, tasks, extra in runs:
        _, exit_code = sbatch(tmp_path, dict(env, RUN_NAME=run_name), *tasks, *common, *extra)
        output = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
        assert exit_code == 0, output[-4000:]
    assert "written by 2 processes, on 1 through its universal conversion" in output
    whole, elastic = losses(tmp_path / "runs" / "whole"), losses(tmp_path / "runs" / "elastic")
    assert sorted(whole) == sorted(elastic) and len(whole) == 8
    assert max(abs(whole[s] - elastic[s]) / whole[s] for s in whole) <= 1e-5
