"""slurm/prep.sbatch on a real SLURM scheduler (one-node cluster: slurm/cluster-up.sh): an array job
of slices plus the merge it submits gives the same prepared directory as a single-process build."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_prep.build import build
from data_prep.config import compose
from data_prep.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.data_prep.dp_helpers import assert_same_prepared, stdlib_documents, write_txt
from tests.slurm_jobs import job_state, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_array_job_slices_and_merge_equal_a_single_build(tmp_path, app_env):
    corpus = write_txt(tmp_path / "corpus" / "docs.txt", stdlib_documents()[:40])
    common = [f"work_dir={tmp_path}", "corpus=files", "corpus.name=english",
              f"corpus.paths=[{corpus}]"]  # fmt: skip
    tokenizer = train_tokenizer(compose("tokenizer", [*common, "vocab_size=600"]))
    prep = [*common, f"tokenizer_dir={tokenizer}", "max_seq_length=64", "dupe_factor=2"]
    single = build(compose("prep", [*prep, "num_proc=1", f"output_dir={tmp_path}/single"]))

    env = dict(app_env, PYTHON=sys.executable)
    submit = ["sbatch", "--parsable", f"--chdir={tmp_path}", "--array=0-2", "--cpus-per-task=1",
              str(REPO / "slurm" / "prep.sbatch"), *prep, f"output_dir={tmp_path}/sliced"]  # fmt: skip
    array = subprocess.run(submit, env=env, capture_output=True, text=True, check=True)
    array_id = array.stdout.strip().split(";")[0]
    wait_for(lambda: not job_state(array_id), 300, f"array job {array_id} to finish")
    merge_name = f"bert-prep-merge-{array_id}"
    wait_for(lambda: not squeue_name(merge_name), 300, f"the merge job {merge_name} to finish")

    logs = {p.name: p.read_text() for p in tmp_path.glob(f"slurm-bert-prep-{array_id}_*.out")}
    every = "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in sorted(logs.items()))
    assert set(logs) == {f"slurm-bert-prep-{array_id}_{k}.out" for k in ("0", "1", "2", "merge")}
    for k in range(3):
        assert f"slice {k + 1}/3: documents" in logs[f"slurm-bert-prep-{array_id}_{k}.out"], every
    assert "submitted merge job" in logs[f"slurm-bert-prep-{array_id}_0.out"], every
    assert "merged 3 slices" in logs[f"slurm-bert-prep-{array_id}_merge.out"], every
    assert_same_prepared(single, tmp_path / "sliced")
    assert not (tmp_path / "sliced.slices").exists()


def squeue_name(name: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True
    )
    return out.stdout.strip()
