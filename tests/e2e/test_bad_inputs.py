"""Bad inputs and faults, as a careless or unlucky user meets them, on every entry point.

Each case runs the real command in a sandbox of its own (a copy of a small prepared data set and
a finished 4-step run) and asserts: the exit status (2 for our one-line errors, 1 for Hydra's
composition errors), that the message names the file, field or value at fault, that no traceback
is printed, that a crafted pickle never ran, and that no file outside the command's own output
(its run directory, its log directory) was added, changed or removed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.faults import booby_trapped, flip_bytes, truncate

pytestmark = pytest.mark.e2e

CKPT = "work/runs/tiny/checkpoints/last.ckpt"
SHARD = "work/data/english/train/data-00000-of-00001.arrow"


@dataclass
class Sandbox:
    root: Path

    def __getattr__(self, name: str) -> Path:  # sb.work, sb.data, ...
        return self.root / PLACES[name]

    def path(self, rel: str) -> Path:
        return self.root / rel


PLACES = {
    "work": "work",
    "data": "work/data/english",
    "run": "work/runs/tiny",
    "ckpt": CKPT,
    "shard": SHARD,
    "trap": "trap.ckpt",
    "marker": "PWNED",
    "csv": "csv",
}


@dataclass
class Case:
    id: str
    app: str
    """Module of the entry point (`python -m APP`)."""
    args: list[str]
    """Arguments; `{work}`, `{data}`, `{run}`, `{ckpt}`, `{shard}`, `{trap}`, `{marker}`, `{csv}`,
    `{root}` are sandbox paths."""
    says: list[str]
    """Substrings of stderr (formatted like `args`): the thing at fault, and the fix."""
    setup: Callable[[Sandbox], None] | None = None
    code: int = 2
    own: list[str] = field(default_factory=lambda: ["work/runs/bad"])
    """Paths (relative to the sandbox) the command may write: its run or log directory."""


def pretrain(*args: str) -> list[str]:
    return ["experiment=debug", "work_dir={work}", "data.dir={data}", "name=bad", *args]


def finetune(*args: str) -> list[str]:
    return [
        "task=sequence_classification", "task.name=kw", "work_dir={work}", "name=bad",
        "model={run}", "task.train={csv}/train.csv", "task.dev={csv}/dev.csv",
        "task.test={csv}/test.csv", "trainer.max_epochs=1", *args,
    ]  # fmt: skip


FINETUNE_OWN = ["work/finetune"]  # created by the run: its directory and the parent


# ------------------------------------------------------------------ setups


def trap_checkpoint(sb: Sandbox) -> None:
    """A crafted pickle that looks like a checkpoint (it holds the real one's contents)."""
    booby_trapped(sb.trap, sb.marker, torch.load(sb.ckpt, weights_only=True))


def trap_last_checkpoint(sb: Sandbox) -> None:
    """Someone with write access to a shared run directory replaced last.ckpt (and its sum)."""
    from pretrain.integrity import checksum_path

    booby_trapped(sb.ckpt, sb.marker, torch.load(sb.ckpt, weights_only=True))
    checksum_path(sb.ckpt).unlink()


def write_manifest(sb: Sandbox, text: str) -> None:
    (sb.data / "manifest.json").write_text(text)


def csv_splits(sb: Sandbox, labels: tuple[str, str] = ("yes", "no")) -> None:
    sb.csv.mkdir(exist_ok=True)
    for split in ("train", "dev", "test"):
        with open(sb.csv / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(8):
                w.writerow([f"sentence number {i} of the {split} split", labels[i % 2]])


def out_of_vocab_shard(sb: Sandbox) -> None:
    """An id past the vocabulary in a shard whose checksum was updated to match."""
    import datasets

    from data_prep.files import sha256_file

    split = sb.data / "train"
    rows = datasets.load_from_disk(str(split)).to_dict()
    rows["input_ids"][3][5] = 999_999
    fixed = sb.root / "fixed"
    datasets.Dataset.from_dict(rows).save_to_disk(str(fixed))
    shutil.copyfile(fixed / "data-00000-of-00001.arrow", sb.shard)
    shutil.rmtree(fixed)
    manifest = json.loads((sb.data / "manifest.json").read_text())
    entry = manifest["files"]["train/data-00000-of-00001.arrow"]
    entry.update(sha256=sha256_file(sb.shard), bytes=sb.shard.stat().st_size)
    write_manifest(sb, json.dumps(manifest))


def earlier_export(sb: Sandbox) -> None:
    from pretrain.export import export_hf
    from pretrain.weights import load_pretrained

    export_hf(load_pretrained(sb.run), sb.root / "exported")


def user_files(sb: Sandbox) -> None:
    (sb.root / "mine").mkdir()
    (sb.root / "mine" / "results.csv").write_text("1,2\n")


def text_corpus(sb: Sandbox, content: bytes) -> None:
    (sb.root / "corpus").mkdir()
    (sb.root / "corpus" / "a.txt").write_bytes(content)


# ------------------------------------------------------------------ the table

CASES = [
    # bert-pretrain: data
    Case("missing data dir", "pretrain.train", pretrain("data.dir={root}/nope"),
         ["data.dir=", "nope", "bert-prep"]),
    Case("data dir without manifest", "pretrain.train", pretrain(),
         ["manifest.json is missing", "re-run `bert-prep`"],
         setup=lambda sb: (sb.data / "manifest.json").unlink()),
    Case("manifest not JSON", "pretrain.train", pretrain(),
         ["manifest.json is not valid JSON", "force=true"],
         setup=lambda sb: write_manifest(sb, "{ not json")),
    Case("corrupt data shard", "pretrain.train", pretrain(),
         ["data shard {shard} is corrupt", "bert-prep force=true"],
         setup=lambda sb: flip_bytes(sb.shard)),
    Case("truncated data shard", "pretrain.train", pretrain(),
         ["data shard {shard}", "truncated", "bert-prep force=true"],
         setup=lambda sb: truncate(sb.shard)),
    Case("token id outside the vocabulary", "pretrain.train", pretrain(),
         ["data shard {shard}", "999999", "vocab"], setup=out_of_vocab_shard),
    Case("vocabulary of the data replaced", "pretrain.train", pretrain(),
         ["{data}/tokenizer/vocab.txt", "does not match tokenizer.json"],
         setup=lambda sb: (sb.data / "tokenizer" / "vocab.txt").write_text("[PAD]\nhello\n")),
    # bert-pretrain: config
    Case("mistyped experiment", "pretrain.train", ["experiment=nosuch", "work_dir={work}"],
         ["experiment/nosuch", "debug"], code=1),
    Case("mistyped group option", "pretrain.train", pretrain("strategy=deepspeed_zero9"),
         ["strategy/deepspeed_zero9", "deepspeed_zero2"], code=1),
    Case("unknown key with +", "pretrain.train", pretrain("+trainer.max_stepz=5"),
         ["trainer.max_stepz", "max_steps"]),
    Case("unknown key", "pretrain.train", pretrain("trainer.max_stepz=5"),
         ["max_stepz"], code=1),
    Case("wrong type", "pretrain.train", pretrain("optim.lr=fast"), ["optim.lr", "fast"], code=1),
    Case("negative steps", "pretrain.train", pretrain("trainer.max_steps=-1"),
         ["trainer.max_steps must be positive"]),
    Case("unknown precision", "pretrain.train", pretrain("trainer.precision=fp8"),
         ["trainer.precision='fp8'"]),
    Case("batch not divisible", "pretrain.train", pretrain("data.global_batch_size=10"),
         ["data.global_batch_size=10", "micro_batch_size=4"]),
    Case("vocab size against the data", "pretrain.train", pretrain("model.vocab_size=500"),
         ["model.vocab_size=500", "1000"]),
    Case("positions shorter than the data", "pretrain.train",
         pretrain("model.max_position_embeddings=32"),
         ["model.max_position_embeddings=32", "64"]),
    # bert-pretrain: checkpoints
    Case("resume from a missing file", "pretrain.train", pretrain("resume={root}/nope.ckpt"),
         ["resume=", "nope.ckpt", "no such checkpoint"]),
    Case("resume from the run's config.yaml", "pretrain.train",
         pretrain("resume={run}/config.yaml"), ["config.yaml is not a checkpoint"]),
    Case("resume from a crafted pickle", "pretrain.train", pretrain("resume={trap}"),
         ["refusing to load {trap}", "posix.system"], setup=trap_checkpoint),
    Case("crafted last.ckpt found by resume=auto", "pretrain.train",
         pretrain("name=tiny", "trainer.max_steps=4", "trainer.val_check_interval=4"),
         ["refusing to load {ckpt}"], setup=trap_last_checkpoint,
         own=["work/runs/tiny/.hydra", "work/runs/tiny/train.log"]),
    Case("corrupt last.ckpt", "pretrain.train",
         pretrain("name=tiny", "trainer.max_steps=4", "trainer.val_check_interval=4"),
         ["checkpoint corrupt: {ckpt}", "nothing was written"],
         setup=lambda sb: flip_bytes(sb.ckpt),
         own=["work/runs/tiny/.hydra", "work/runs/tiny/train.log"]),
    Case("truncated last.ckpt", "pretrain.train",
         pretrain("name=tiny", "trainer.max_steps=4", "trainer.val_check_interval=4"),
         ["checkpoint corrupt: {ckpt}"], setup=lambda sb: truncate(sb.ckpt),
         own=["work/runs/tiny/.hydra", "work/runs/tiny/train.log"]),
    Case("run directory of another experiment", "pretrain.train",
         pretrain("name=tiny", "optim.lr=3e-3", "trainer.max_steps=4",
                  "trainer.val_check_interval=4"),
         ["run directory", "optim.lr=0.001", "optim.lr=0.003", "allow_run_dir_mismatch=true"],
         own=["work/runs/tiny/.hydra", "work/runs/tiny/train.log"]),
    Case("init_from a crafted pickle", "pretrain.train", pretrain("init_from={trap}"),
         ["refusing to load {trap}"], setup=trap_checkpoint),
    Case("init_from a missing path", "pretrain.train", pretrain("init_from={root}/nope"),
         ["nope does not exist"]),
    # bert-export
    Case("export over the work directory", "pretrain.export",
         ["checkpoint={run}", "output_dir={work}"],
         ["output_dir={work} is not empty and not an earlier export"], own=[]),
    Case("export over a user's folder with overwrite", "pretrain.export",
         ["checkpoint={run}", "output_dir={root}/mine", "overwrite=true"],
         ["output_dir={root}/mine", "results.csv"], setup=user_files, own=[]),
    Case("export over an earlier export", "pretrain.export",
         ["checkpoint={run}", "output_dir={root}/exported"],
         ["holds an earlier export", "overwrite=true"], setup=earlier_export, own=[]),
    Case("export a crafted pickle", "pretrain.export",
         ["checkpoint={trap}", "output_dir={root}/out"], ["refusing to load {trap}"],
         setup=trap_checkpoint, own=[]),
    Case("export a corrupt checkpoint", "pretrain.export",
         ["checkpoint={ckpt}", "output_dir={root}/out"], ["checkpoint corrupt: {ckpt}"],
         setup=lambda sb: flip_bytes(sb.ckpt), own=[]),
    Case("export a missing path", "pretrain.export",
         ["checkpoint={root}/nope", "output_dir={root}/out"], ["nope does not exist"], own=[]),
    Case("export with an unknown key", "pretrain.export",
         ["checkpoint={run}", "output_dir={root}/out", "+overwrit=true"], ["overwrit"], own=[]),
    # bert-consolidate
    Case("consolidate a single-file checkpoint", "pretrain.consolidate",
         ["{ckpt}", "{root}/model.pt"], ["not a DeepSpeed checkpoint directory"], own=[]),
    Case("consolidate onto an existing file", "pretrain.consolidate",
         ["{ckpt}", "{root}/mine/results.csv"], ["results.csv already exists", "--overwrite"],
         setup=user_files, own=[]),
    # bert-plot
    Case("plot a missing run", "pretrain.plot", ["run={root}/nope"],
         ["run={root}/nope does not exist", "work/runs/demo"], own=[]),
    Case("plot a run with no training step logged", "pretrain.plot", ["run={run}"],
         ["no training loss (train/loss)", "log_every_n_steps"], own=[]),
    # bert-predict
    Case("predict in int8 on a GPU", "pretrain.finetune.predict",
         ["model={run}", "text=hello", "quantize=int8", "device=cuda"],
         ["quantize=int8 runs on the CPU only", "device=cpu"], own=[]),
    # bert-finetune
    Case("fine-tune a crafted pickle", "pretrain.finetune", finetune("model={trap}"),
         ["refusing to load {trap}"], setup=lambda sb: (trap_checkpoint(sb), csv_splits(sb)),
         own=FINETUNE_OWN),
    Case("fine-tune with real-valued labels", "pretrain.finetune", finetune(),
         ["train.csv", "real numbers"], setup=lambda sb: csv_splits(sb, ("0.13", "0.92")),
         own=FINETUNE_OWN),
    Case("fine-tune without the text column", "pretrain.finetune",
         finetune("task.text_column=review"), ["review"], setup=csv_splits, own=FINETUNE_OWN),
    Case("fine-tune a mistyped task", "pretrain.finetune", ["task=rotten_tomatos"],
         ["task/rotten_tomatos", "rotten_tomatoes"], code=1, own=[]),
    # bert-prep and bert-tokenizer
    Case("prep a missing corpus file", "data_prep.build",
         ["work_dir={work}", "corpus=files", "corpus.name=x", "corpus.paths=[{root}/nope.txt]",
          "tokenizer_dir={data}/tokenizer"],
         ["nope.txt"], own=["work/logs"]),
    Case("tokenizer on a non-UTF-8 corpus", "data_prep.tokenizer",
         ["work_dir={work}", "corpus=files", "corpus.name=x", "corpus.paths=[{root}/corpus]"],
         ["a.txt", "UTF-8"], setup=lambda sb: text_corpus(sb, "caf\xe9 au lait\n".encode("latin-1")),
         own=["work/logs"]),
    Case("prep with an unknown key", "data_prep.build", ["work_dir={work}", "+max_seq_lenght=64"],
         ["max_seq_lenght", "max_seq_length"], own=["work/logs"]),
]  # fmt: skip


def snapshot(root: Path, own: list[str]) -> dict[str, tuple]:
    """path -> (size, mtime) of every file under `root` (directories: that they exist; their
    mtime changes when the command creates its own directory inside), except the command's own
    paths."""
    skip = [root / o for o in own]
    state = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        st = path.lstat()
        rel = str(path.relative_to(root))
        state[rel] = ("dir",) if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def template(prepared_english, pretrained_run, tmp_path_factory) -> Path:
    """The data and the finished run every sandbox starts from."""
    root = tmp_path_factory.mktemp("bad_inputs_template")
    shutil.copytree(prepared_english, root / PLACES["data"])
    shutil.copytree(pretrained_run, root / PLACES["run"])
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_changes_nothing(case, template, tmp_path, app_env):
    root = tmp_path / "sandbox"
    shutil.copytree(template, root)
    sb = Sandbox(root)
    if case.setup:
        case.setup(sb)
    places = {k: str(getattr(sb, k)) for k in PLACES} | {"root": str(root)}
    args = [a.format(**places) for a in case.args]
    before = snapshot(root, case.own)
    app_env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run([sys.executable, "-m", case.app, *args], cwd=root, env=app_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    shown = f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode == case.code, shown
    for text in case.says:
        assert text.format(**places) in proc.stderr, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert not sb.marker.exists(), "a crafted pickle ran"
    after = snapshot(root, case.own)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed outside {case.own}: {changed}\n{shown}"


def test_the_table_covers_every_entry_point_and_thirty_faults():
    assert len(CASES) >= 30
    assert {c.app for c in CASES} >= {
        "pretrain.train", "pretrain.export", "pretrain.consolidate", "pretrain.finetune",
        "data_prep.build", "data_prep.tokenizer",
    }  # fmt: skip
    assert str(REPO)  # the apps run from the sandbox with the repository on PYTHONPATH


def test_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
    prepared_english, tmp_path, app_env
):
    """The run directory on a 12 MB disk: the first checkpoint (7.6 MB) fits, the next does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    try:
        args = [a.format(work=tmp_path / "work", data=prepared_english) for a in pretrain()]
        proc = subprocess.run(
            [sys.executable, "-m", "pretrain.train", *args, f"run_dir={disk}/run",
             "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2",
             "trainer.val_check_interval=4"],
            env=app_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert f"no space left on the device of {disk}/run/checkpoints" in line
        assert "MB free" in line and "previous checkpoint is intact" in line
        from pretrain.integrity import verify_checkpoint

        finished = [p for p in (disk / "run" / "checkpoints").glob("*.ckpt")]
        assert finished and all(verify_checkpoint(p) for p in finished)
        assert not list((disk / "run" / "checkpoints").glob(".*"))  # no temporaries left
    finally:
        subprocess.run(["umount", str(disk)], check=False)
