"""DeepSpeed ZeRO for real on the CPU: 2 processes under torchrun (gloo, DeepSpeed's CPU
accelerator) against 1 process, resume, the two-launcher "two-node" form, consolidation, errors.

Runs are shared between tests (module-scoped cache) to keep the whole file at a few minutes on
2 cores. Dropout is off in the compared runs: with it on, every rank draws its dropout masks from
the same seeded stream, so a 2-process run would legitimately differ from a 1-process one.

Loss tolerance. The compared quantity is `train/loss_global`, the mean loss over the whole
global batch of a step (both runs see the same 8 samples per step, the same masks and the same
initial weights). The reference is one 1-process ZeRO-2 run (with one process no ZeRO stage
partitions anything: 1-process ZeRO-2 and ZeRO-3 agreed to 7e-5). Under DeepSpeed's bf16 mode
activations, weights and gradients are bf16; with 2 ranks gradients are summed across ranks
instead of across accumulation steps, so rounding happens in a different order, which nudges
each update and compounds over 20 AdamW steps. We allow a relative difference of 2e-3 per step:
about half of bf16's unit roundoff (2^-8 ≈ 3.9e-3; bf16 keeps 7 explicit mantissa bits), so below
what one bf16 rounding of the loss itself could change, and 25× the largest difference measured
here (8e-5). A real fault (a rank's gradients not averaged, a shard lost) changes the trajectory
by far more within a few steps.
The first step, before any update, must agree to 1e-6. A resumed run (same ranks, same order)
must reproduce the uninterrupted one to 1e-6 (it was bit-identical when measured).
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # a dependency of DeepSpeed
import pytest
import torch

from pretrain.checkpointing import is_unfinished_write, unfinished_writes, validate_checkpoint
from pretrain.consolidate import load_consolidated
from pretrain.errors import UserError
from pretrain.model import BertForPreTraining
from tests.pretrain_runs import distributed_env as env
from tests.pretrain_runs import free_port, torchrun

pytestmark = [pytest.mark.multiprocess, pytest.mark.e2e]

STEPS = 20
REL_TOL = 2e-3  # 2-process vs 1-process, bf16 (justified in the module docstring)
RESUME_TOL = 1e-6  # resumed vs uninterrupted, same world size
COMMON = (
    "experiment=debug",
    "model.hidden_dropout=0",
    "model.attention_dropout=0",
    "trainer.precision=bf16-mixed",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=20",
    "trainer.checkpoint_every_n_steps=10",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
)


def app_args(*overrides: str) -> list[str]:
    """`-m pretrain.train` and COMMON with `overrides` applied (a later key=value wins)."""
    merged = {o.split("=", 1)[0]: o for o in (*COMMON, *overrides)}
    return ["-m", "pretrain.train", *merged.values()]


class Runs:
    """Launches `bert-pretrain` runs once per module and remembers their results."""

    def __init__(self, work: Path, data: Path):
        self.work, self.data = work, data
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def launch(
        self, name: str, nproc: int, *overrides: str, check: bool = True, key: str | None = None
    ) -> subprocess.CompletedProcess:
        key = key or name
        if key in self.done:
            return self.done[key]
        app = app_args(
            f"work_dir={self.work}",
            f"data.dir={self.data}",
            f"name={name}",
            f"trainer.devices={nproc}",
            *overrides,
        )
        cmd = torchrun(nproc, *app) if nproc > 1 else [sys.executable, *app]
        proc = subprocess.run(
            cmd, env=env(), cwd=self.work, capture_output=True, text=True, timeout=600
        )
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        self.done[key] = proc
        return proc

    def reference(self) -> Path:
        self.launch("reference", 1, "strategy=deepspeed_zero2")
        return self.run_dir("reference")

    def two_process(self, stage: int) -> Path:
        self.launch(f"zero{stage}", 2, f"strategy=deepspeed_zero{stage}")
        return self.run_dir(f"zero{stage}")


@pytest.fixture(scope="module")
def runs(prepared_english, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("deepspeed"), prepared_english)


def global_losses(run_dir: Path) -> list[float]:
    """`train/loss_global` per optimizer step, over every launch (CSV version) of a run."""
    by_step: dict[int, float] = {}
    versions = sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss_global"):
                    by_step[int(row["step"])] = float(row["train/loss_global"])
    return [by_step[s] for s in sorted(by_step)]


def shards(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in (checkpoint / "checkpoint").iterdir())


@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_match_one_process(runs, stage):
    one = global_losses(runs.reference())
    two_dir = runs.two_process(stage)
    two = global_losses(two_dir)
    assert len(one) == len(two) == STEPS
    assert abs(one[0] - two[0]) <= 1e-6 * one[0]  # same weights, same samples
    worst = max(abs(a - b) / a for a, b in zip(one, two, strict=True))
    print(f"ZeRO-{stage}: first step {abs(one[0] - two[0]) / one[0]:.2e}, worst {worst:.2e}")
    assert worst <= REL_TOL, f"max relative difference {worst:.4f}\n1 proc {one}\n2 proc {two}"
    assert one[-1] < one[0]  # it learns, so the comparison is not of two flat lines
    # Every rank wrote its shard; nothing else is duplicated per rank.
    ckpts = two_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000020.ckpt"]
    names = shards(ckpts / "last.ckpt")
    for rank in (0, 1):
        assert f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in names
        if stage == 3:
            assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in names
    assert len(list((two_dir / "csv").glob("version_*"))) == 1
    assert len(list(two_dir.glob("*.log"))) <= 1  # Hydra's job log: rank 0 only
    out = runs.done[f"zero{stage}"]
    assert out.stdout.count("pretraining finished") == 1
    assert "micro-batch 4 × accumulation 1 × 2 = global batch 8" in out.stdout + out.stderr


def test_resumed_run_continues_with_the_same_losses(runs):
    uninterrupted = global_losses(runs.two_process(3))
    name = "zero3_resume"
    runs.launch(name, 2, "strategy=deepspeed_zero3", "trainer.exit_after_steps=10", key="first")
    first = runs.run_dir(name)
    assert len(global_losses(first)) == 10
    assert (first / "checkpoints" / "last.ckpt" / "latest").is_file()
    second = runs.launch(name, 2, "strategy=deepspeed_zero3", key="second")
    assert "resuming from" in second.stdout + second.stderr
    resumed = global_losses(first)
    assert len(resumed) == STEPS
    worst = max(abs(a - b) for a, b in zip(uninterrupted, resumed, strict=True))
    print(f"resume: worst absolute difference {worst:.2e}")
    assert worst <= RESUME_TOL, f"{uninterrupted}\n{resumed}"


def test_two_launchers_simulating_two_nodes_train_and_checkpoint(runs):
    port, name = free_port(), "two_nodes"
    app = app_args(
        f"work_dir={runs.work}", f"data.dir={runs.data}", f"name={name}",
        "strategy=deepspeed_zero2", "trainer.num_nodes=2", "trainer.devices=1",
        "trainer.precision=32", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "trainer.checkpoint_every_n_steps=4",
    )  # fmt: skip

    def launcher(node: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc_per_node", "1", "--node_rank", str(node), "--master_addr", "127.0.0.1",
            "--master_port", str(port), *app,
        ]  # fmt: skip

    launchers = [
        subprocess.Popen(
            launcher(node),
            env=env(),
            cwd=runs.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in launchers]
    for p, out in zip(launchers, outputs, strict=True):
        assert p.returncode == 0, out[-5000:]
    assert "world size 2" in outputs[0]
    last = runs.run_dir(name) / "checkpoints" / "last.ckpt"
    names = shards(last)
    assert {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= set(names)
    assert validate_checkpoint(last, {}, world_size=2, zero_stage=2) == 4


def test_zero3_checkpoint_consolidates_to_one_fp32_state_dict(runs, tmp_path):
    checkpoint = runs.two_process(3) / "checkpoints" / "last.ckpt"
    out = tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.consolidate", str(checkpoint), str(out)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_consolidated(out)  # strict: no missing or unexpected keys
    saved = torch.load(out, weights_only=True)
    assert saved["global_step"] == STEPS
    assert set(saved["state_dict"]) == set(BertForPreTraining(model.cfg).state_dict())
    assert all(v.dtype == torch.float32 for v in saved["state_dict"].values())
    assert model.cfg.hidden_size == 128  # bert-tiny


def test_sharded_checkpoint_errors_name_what_differs(runs, tmp_path):
    checkpoint = runs.two_process(3) / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="written by 2 processes but this launch has 1"):
        validate_checkpoint(checkpoint, {}, world_size=1, zero_stage=3)
    with pytest.raises(UserError, match="ZeRO stage 3 but this run uses stage 2"):
        validate_checkpoint(checkpoint, {}, world_size=2, zero_stage=2)
    with pytest.raises(UserError, match=r"another model \(model.hidden_size: checkpoint 128"):
        validate_checkpoint(checkpoint, {"hidden_size": 256}, world_size=2, zero_stage=3)
    broken = tmp_path / "broken.ckpt"
    shutil.copytree(checkpoint, broken)
    (broken / "checkpoint" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(UserError, match=r"missing shard\(s\) bf16_zero_pp_rank_1_mp_rank_00_optim"):
        validate_checkpoint(broken, {}, world_size=2, zero_stage=3)


def test_resuming_with_another_world_size_without_elastic_resume_fails_clearly(runs):
    """(With elastic_resume, the default, it resumes: tests/e2e/test_elastic.py.)"""
    checkpoint = runs.two_process(3) / "checkpoints" / "last.ckpt"
    proc = runs.launch(
        "other_world", 1, "strategy=deepspeed_zero3", f"resume={checkpoint}",
        "elastic_resume=false", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        f"checkpoint {checkpoint} was written by 2 processes but this launch has 1 and "
        "elastic_resume=false" in proc.stderr
    )
    assert not (checkpoint.parent / "universal").exists()  # nothing written beside it


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(runs):
    name = "diverges"
    proc = runs.launch(
        name, 1, "strategy=auto", "trainer.precision=32", "optim.lr=1e30",
        "schedule=constant", "trainer.checkpoint_every_n_steps=1", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the loss became" in proc.stderr
    failed_at = int(proc.stderr.split("the loss became")[1].split("at step ")[1].split(":")[0])
    last = runs.run_dir(name) / "checkpoints" / "last.ckpt"
    assert validate_checkpoint(last, {}) == failed_at - 1  # written before the bad step, intact


def test_zero_save_killed_mid_write_leaves_only_a_temporary_that_resume_ignores(runs):
    """A 2-process ZeRO-2 run writes each checkpoint directory into a temporary sibling: kill -9
    both ranks as soon as one is seen on disk, plant one more partial temporary that looks like a
    checkpoint, relaunch: it resumes from a finished checkpoint (or starts over), says it ignores
    the temporaries, finishes, and leaves none behind."""
    name = "killed_mid_save"
    ckpts = runs.run_dir(name) / "checkpoints"
    overrides = (
        "strategy=deepspeed_zero2", "trainer.precision=32", "trainer.max_steps=4",
        "trainer.checkpoint_every_n_steps=2", "trainer.val_check_interval=4",
    )  # fmt: skip
    app = app_args(
        f"work_dir={runs.work}", f"data.dir={runs.data}", f"name={name}", "trainer.devices=2",
        *overrides,
    )  # fmt: skip
    launch = subprocess.Popen(
        torchrun(2, *app),
        env=env(),
        cwd=runs.work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen, deadline = None, time.monotonic() + 300
    while seen is None and launch.poll() is None and time.monotonic() < deadline:
        if ckpts.is_dir():
            seen = next((p.name for p in ckpts.iterdir() if ".tmp-" in p.name), None)
        time.sleep(0.002)
    if launch.poll() is None:
        # torchrun starts each rank in a session of its own: kill the ranks by pid, then torchrun.
        for proc in [*psutil.Process(launch.pid).children(recursive=True), launch]:
            proc.send_signal(signal.SIGKILL)
    launch.wait()
    assert seen is not None, "no checkpoint directory was written through a temporary sibling"
    for path in ckpts.iterdir():  # whatever the kill interrupted, what looks finished is
        if not is_unfinished_write(path):
            assert validate_checkpoint(path, {}, world_size=2, zero_stage=2) == 2

    planted = ckpts / ".last.ckpt.tmp-0-crashed"
    (planted / "checkpoint").mkdir(parents=True)
    (planted / "latest").write_text("checkpoint")
    out = runs.launch(name, 2, *overrides)
    log = out.stdout + out.stderr
    assert "unfinished checkpoint write(s)" in log and planted.name in log, log[-3000:]
    assert validate_checkpoint(ckpts / "last.ckpt", {}, world_size=2, zero_stage=2) == 4
    assert unfinished_writes(ckpts) == []
    assert {"last.ckpt", "step0000004.ckpt"} <= {p.name for p in ckpts.iterdir()}


def test_downstream_evaluation_under_zero2_leaves_the_losses_unchanged(runs, tmp_path):
    """`eval_downstream` on a 2-process ZeRO-2 run (rank 0 fine-tunes a copy of its full-size
    bf16 module, the other rank waits): the per-step losses are those of the same run without it."""
    from tests.finetune_rows import synthetic, write_splits

    vocab = (runs.data / "tokenizer" / "vocab.txt").read_text().split()
    words = sorted(w for w in vocab if w.isalpha() and len(w) > 3)[:40]
    rows = {"train": synthetic(words, 64, 0, False), "dev": synthetic(words, 32, 1, False)}
    files = write_splits(tmp_path, rows, "csv")
    without = global_losses(runs.two_process(2))
    name = "zero2_downstream"
    out = runs.launch(
        name, 2, "strategy=deepspeed_zero2", "eval_downstream.every_n_steps=10",
        "eval_downstream.task=sequence_classification", "+eval_downstream.task_fields.name=kw",
        *(f"+eval_downstream.task_fields.{o.removeprefix('task.')}" for o in files),
        "+eval_downstream.task_fields.max_seq_length=32",
    )  # fmt: skip
    assert global_losses(runs.run_dir(name)) == without
    log = out.stdout + out.stderr
    assert log.count("downstream evaluation at step") == 2, log[-3000:]
    (version,) = (runs.run_dir(name) / "csv").glob("version_*")
    with open(version / "metrics.csv") as f:
        scores = {int(r["step"]): float(r["downstream/kw/accuracy"]) for r in csv.DictReader(f)
                  if r.get("downstream/kw/accuracy")}  # fmt: skip
    assert sorted(scores) == [9, 19] and all(0 <= a <= 1 for a in scores.values())


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_exports_to_transformers_with_the_consolidated_weights(runs, stage, tmp_path):
    """The path ZeRO runs take out of the framework: the run directory straight into bert-export
    (consolidated in memory), and bert-consolidate's file into bert-export, both loading in
    transformers with no missing keys and the consolidated model's logits."""
    transformers = pytest.importorskip("transformers")
    run = runs.two_process(stage)
    assert (run / "checkpoints" / "last.ckpt" / "sha256sums.txt").is_file()
    consolidated = tmp_path / "model.pt"
    commands = {
        "run": [sys.executable, "-m", "pretrain.export", f"checkpoint={run}",
                f"output_dir={tmp_path / 'from_run'}"],
        "consolidate": [sys.executable, "-m", "pretrain.consolidate",
                        str(run / "checkpoints" / "last.ckpt"), str(consolidated)],
        "file": [sys.executable, "-m", "pretrain.export", f"checkpoint={consolidated}",
                 f"output_dir={tmp_path / 'from_file'}"],
    }  # fmt: skip
    for cmd in commands.values():
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ours = load_consolidated(consolidated)
    ids = torch.randint(5, ours.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    types, mask = torch.zeros_like(ids), torch.ones_like(ids)
    with torch.no_grad():
        expected = ours(ids, types, mask)
    for name in ("from_run", "from_file"):
        hf, info = transformers.BertForPreTraining.from_pretrained(
            tmp_path / name, output_loading_info=True
        )
        assert not any(info.values()), info
        with torch.no_grad():
            out = hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
        torch.testing.assert_close(out.prediction_logits, expected.mlm_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            out.seq_relationship_logits, expected.nsp_logits, atol=1e-5, rtol=1e-5
        )


def test_zero_shards_are_checksummed_and_vetted_before_deepspeed_reads_them(runs, tmp_path):
    from pretrain.integrity import write_directory_checksums
    from tests.faults import booby_trapped, flip_bytes

    source = runs.two_process(2) / "checkpoints" / "last.ckpt"
    corrupt = tmp_path / "corrupt" / "last.ckpt"
    shutil.copytree(source, corrupt)
    shard = corrupt / "checkpoint" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    flip_bytes(shard)
    with pytest.raises(UserError, match=r"checkpoint corrupt: .*rank_1_mp_rank_00_optim_states"):
        validate_checkpoint(corrupt, {}, world_size=2, zero_stage=2)

    # A crafted shard with matching checksums (whoever planted it rewrote them too).
    trapped = tmp_path / "trapped" / "last.ckpt"
    shutil.copytree(source, trapped)
    marker = tmp_path / "pwned"
    shard = trapped / "checkpoint" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    booby_trapped(shard, marker, torch.load(shard, weights_only=False))
    write_directory_checksums(trapped)
    with pytest.raises(UserError, match="refusing to load"):
        validate_checkpoint(trapped, {}, world_size=2, zero_stage=2)
    for cmd in (
        [sys.executable, "-m", "pretrain.consolidate", str(trapped), str(tmp_path / "m.pt")],
        [sys.executable, "-m", "pretrain.export", f"checkpoint={trapped}",
         f"output_dir={tmp_path / 'hf'}"],
    ):  # fmt: skip
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "refusing to load" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    proc = runs.launch("trapped", 2, "strategy=deepspeed_zero2", f"resume={trapped}", check=False)
    assert proc.returncode != 0 and "refusing to load" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()
