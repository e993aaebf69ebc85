"""A run directory that belongs to another experiment is refused, naming both sides."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from pretrain.errors import UserError
from pretrain.run_dir import check_run_dir_owner


def saved(run_dir) -> tuple[dict, dict]:
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return config, json.loads((run_dir / "data_manifest.json").read_text())


def test_same_experiment_passes_and_others_are_refused(pretrained_run, tmp_path):
    config, manifest = saved(pretrained_run)
    check_run_dir_owner(pretrained_run, config, manifest, allow=False)
    # What may change between launches of one run: length, rates, logging, placement.
    same = copy.deepcopy(config)
    same["trainer"]["max_steps"] = 100
    same["optim"]["lr"] = 0.5
    same["data"]["dir"] = "/elsewhere/same-data"  # a moved copy of the same data is the same data
    check_run_dir_owner(pretrained_run, same, manifest, allow=False)
    check_run_dir_owner(tmp_path / "new", config, manifest, allow=False)  # nobody's yet

    other_model = copy.deepcopy(config)
    other_model["model"]["num_layers"] = 12
    with pytest.raises(UserError) as err:
        check_run_dir_owner(pretrained_run, other_model, manifest, allow=False)
    message = str(err.value)
    assert f"run directory {pretrained_run} belongs to another experiment" in message
    assert "model.num_layers=2;" in message and "model.num_layers=12." in message
    assert "allow_run_dir_mismatch=true" in message and "another name=" in message

    other_data = copy.deepcopy(manifest)
    other_data["max_seq_length"] = 512
    other_data["tokenizer"]["sha256"] = "f" * 64
    with pytest.raises(UserError, match=r"data \(max_seq_length\)=64, .*=512"):
        check_run_dir_owner(pretrained_run, config, other_data, allow=False)
    other_seed = dict(config, seed=7)
    with pytest.raises(UserError, match=r"seed=1234; this launch .* seed=7"):
        check_run_dir_owner(pretrained_run, other_seed, manifest, allow=False)
    check_run_dir_owner(pretrained_run, other_model, other_data, allow=True)  # the user's choice


@pytest.mark.e2e
def test_bert_pretrain_refuses_another_experiments_run_dir(
    pretrained_run, prepared_english, tmp_path, app_env
):
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    for name in ("config.yaml", "data_manifest.json"):  # a run that crashed before a checkpoint
        shutil.copy(pretrained_run / name, run / name)
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
           f"data.dir={prepared_english}", "name=tiny", "model=bert-mini", "trainer.max_steps=2",
           "trainer.val_check_interval=2"]  # fmt: skip
    proc = subprocess.run(cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "belongs to another experiment" in proc.stderr and "Traceback" not in proc.stderr
    assert "model.num_layers=2" in proc.stderr and "model.num_layers=4" in proc.stderr
    assert saved(run)[0]["model"]["num_layers"] == 2  # the other run's files are left alone
    assert not (run / "checkpoints").exists()

    proc = subprocess.run([*cmd, "allow_run_dir_mismatch=true"], env=app_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert saved(run)[0]["model"]["num_layers"] == 4
