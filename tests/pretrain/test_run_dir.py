"""Resuming a run directory that was trained differently is refused, naming both sides."""

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
    # What may change between launches of one run: placement, logging, speed, validation.
    same = copy.deepcopy(config)
    for key, value in {
        "data.micro_batch_size": 2, "data.num_workers": 3, "data.val_batch_size": 2,
        "data.val_mlm_probability": 0.15, "data.dir": "/elsewhere/same-data",
        "trainer.devices": 4, "trainer.precision": "bf16-mixed", "trainer.val_check_interval": 7,
        "trainer.checkpoint_every_n_steps": 3, "trainer.exit_after_steps": 2,
        "trainer.compile": True, "strategy.name": "ddp", "logger.name": "none", "resume": "never",
        "optim.implementation": "foreach", "model.sparse_mlm": False,
        "eval_downstream.every_n_steps": 5,
    }.items():  # fmt: skip
        section, _, leaf = key.rpartition(".")
        (same[section] if section else same)[leaf] = value
    check_run_dir_owner(pretrained_run, same, manifest, allow=False)
    check_run_dir_owner(tmp_path / "new", config, manifest, allow=False)  # nobody's yet

    other_model = copy.deepcopy(config)
    other_model["model"]["num_layers"] = 12
    with pytest.raises(UserError) as err:
        check_run_dir_owner(pretrained_run, other_model, manifest, allow=False)
    message = str(err.value)
    assert f"run directory {pretrained_run} was trained with model.num_layers=2; " in message
    assert "this launch has model.num_layers=12; resuming it would continue another" in message
    assert "allow_run_dir_mismatch=true" in message and "another name=" in message

    other_data = copy.deepcopy(manifest)
    other_data["max_seq_length"] = 512
    other_data["tokenizer"]["sha256"] = "f" * 64
    with pytest.raises(UserError, match=r"data \(max_seq_length\)=64, .*=512"):
        check_run_dir_owner(pretrained_run, config, other_data, allow=False)
    other_seed = dict(config, seed=7)
    with pytest.raises(UserError, match=r"seed=1234; this launch has seed=7;"):
        check_run_dir_owner(pretrained_run, other_seed, manifest, allow=False)
    check_run_dir_owner(pretrained_run, other_model, other_data, allow=True)  # the user's choice


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("optim", "lr", 0.003),
        ("optim", "name", "lamb"),
        ("optim", "weight_decay", 0.0),
        ("schedule", "name", "constant"),
        ("schedule", "warmup_steps", 1),
        ("data", "global_batch_size", 64),
        ("masking", "mlm_probability", 0.3),
        ("trainer", "max_steps", 100),
        ("trainer", "max_time_minutes", 5.0),
        ("trainer", "gradient_clip_val", None),
        ("model", "hidden_dropout", 0.0),
        ("", "init_from", "work/runs/other"),
    ],
)
def test_a_changed_training_setting_is_refused_naming_both_values(
    pretrained_run, section, key, value
):
    config, manifest = saved(pretrained_run)
    changed = copy.deepcopy(config)
    node = {"": changed, "masking": changed["data"]["masking"]}.get(section) or changed[section]
    before, node[key] = node.get(key), value
    dotted = {"": key, "masking": f"data.masking.{key}"}.get(section, f"{section}.{key}")
    with pytest.raises(UserError) as err:
        check_run_dir_owner(pretrained_run, changed, manifest, allow=False)
    assert str(err.value) == (
        f"run directory {pretrained_run} was trained with {dotted}={before}; this launch has "
        f"{dotted}={value}; resuming it would continue another experiment: pick another name= "
        "(or run_dir=) or pass allow_run_dir_mismatch=true (e.g. to extend trainer.max_steps)"
    )
    check_run_dir_owner(pretrained_run, changed, manifest, allow=True)


def test_a_field_missing_from_an_older_saved_config_counts_as_its_default(pretrained_run, tmp_path):
    config, manifest = saved(pretrained_run)
    old = tmp_path / "old"
    shutil.copytree(pretrained_run, old, ignore=shutil.ignore_patterns("checkpoints"))
    older = copy.deepcopy(config)
    del older["trainer"]["max_time_minutes"], older["schedule"]["min_lr_ratio"]
    del older["data"]["masking"]["max_predictions_per_seq"], older["model"]["position_init"]
    (old / "config.yaml").write_text(OmegaConf.to_yaml(older))
    check_run_dir_owner(old, config, manifest, allow=False)  # all at their defaults: the same
    budgeted = copy.deepcopy(config)
    budgeted["trainer"]["max_time_minutes"] = 5.0
    with pytest.raises(UserError, match=r"trainer\.max_time_minutes=None; .*=5\.0;"):
        check_run_dir_owner(old, budgeted, manifest, allow=False)


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
    assert "resuming it would continue another experiment" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "model.num_layers=2" in proc.stderr and "model.num_layers=4" in proc.stderr
    assert saved(run)[0]["model"]["num_layers"] == 2  # the other run's files are left alone
    assert not (run / "checkpoints").exists()

    proc = subprocess.run([*cmd, "allow_run_dir_mismatch=true"], env=app_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert saved(run)[0]["model"]["num_layers"] == 4


@pytest.mark.e2e
def test_a_sweep_trains_every_job_in_its_own_run_dir_and_a_rerun_resumes_each(
    prepared_english, tmp_path, app_env
):
    cmd = [sys.executable, "-m", "pretrain.train", "-m", "experiment=debug", "optim.lr=1e-3,3e-3",
           "trainer.max_steps=2", "trainer.val_check_interval=2", f"work_dir={tmp_path}",
           f"data.dir={prepared_english}"]  # fmt: skip
    proc = subprocess.run(cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "runs" / "debug").iterdir())
    assert [p.name.split("optim.lr=")[1].split(",")[0] for p in runs] == ["0.001", "0.003"]
    assert [saved(p)[0]["optim"]["lr"] for p in runs] == [0.001, 0.003]
    for run in runs:  # each trained, rather than the second resuming the first's finished run
        assert json.loads((run / "summary.json").read_text())["step"] == 2
        assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "resuming from" not in proc.stdout + proc.stderr

    proc = subprocess.run(cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted((tmp_path / "runs" / "debug").iterdir()) == runs
    log = proc.stdout + proc.stderr
    assert all(f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in log for run in runs), log
