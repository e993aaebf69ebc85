"""`optim.lr=auto` (`pretrain/finetune/lr_sweep.py`): the trial length and choice rules, the config
errors, and a tiny sweep end to end (its table, its record, a clean run directory, and a final run
identical to one at the chosen lr)."""

from __future__ import annotations

import json

import pytest

from pretrain.config import ScheduleConfig
from pretrain.errors import UserError
from pretrain.finetune.config import FinetuneConfig, default_lr
from pretrain.finetune.lr_sweep import RECORD, best_trial, trial_length
from tests.finetune_rows import finetune_config, finetune_tiny


def test_a_trial_is_the_run_compressed_to_its_share_of_an_epoch():
    fraction = ScheduleConfig(warmup_fraction=0.1)
    assert trial_length(0.5, 16, fraction, run_steps=48) == (8, fraction)
    assert trial_length(0.01, 16, fraction, run_steps=48)[0] == 1  # at least one step
    steps, schedule = trial_length(0.5, 16, ScheduleConfig(warmup_steps=12), run_steps=48)
    assert (steps, schedule.warmup_steps) == (8, 2)  # a quarter of the run, a quarter of the trial


def test_degenerate_trials_rank_below_the_others_and_ties_go_to_the_earlier_lr():
    def trial(lr: float, acc: float, collapsed: bool) -> dict:
        return {"lr": lr, "accuracy": acc, "degenerate": collapsed}

    assert best_trial([trial(1e-3, 0.9, True), trial(1e-4, 0.6, False)], "accuracy") == 1
    assert best_trial([trial(1e-5, 0.7, False), trial(1e-4, 0.7, False)], "accuracy") == 0
    assert best_trial([trial(1e-5, 0.5, True), trial(1e-4, 0.6, True)], "accuracy") == 1


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lr=fast", "optim.lr='fast' is neither a number nor auto; give a learning rate"),
        ("optim.lr_auto_grid=[]", "optim.lr_auto_grid must list positive learning rates, got []"),
        ("optim.lr_auto_grid=[1e-4,0]", "optim.lr_auto_grid must list positive learning rates"),
        ("optim.lr_auto_epochs=0", "optim.lr_auto_epochs must be positive"),
    ],
)
def test_bad_lr_settings_are_refused_in_one_line(override, message, tmp_path):
    with pytest.raises(UserError) as err:
        finetune_config(tmp_path, "task=sequence_classification", "task.name=t", "model_path=m",
                        override)  # fmt: skip
    assert message in str(err.value) and "\n" not in str(err.value)
    typed = finetune_config(tmp_path, "task=sequence_classification", "task.name=t",
                            "model_path=m", "optim.lr=1")  # fmt: skip
    assert typed.optim.lr == 1.0 and isinstance(typed.optim.lr, float)


def test_lr_auto_end_to_end(tiny_model, sequence_files, tmp_path, capsys):
    task = ["task=sequence_classification", f"model_path={tiny_model}", "trainer.max_epochs=2",
            "task.max_train_examples=64", *sequence_files]  # fmt: skip
    run_dir = tmp_path / "finetune" / "auto-pretrained-s1234"
    (run_dir / ".lr_auto-mine").mkdir(parents=True)  # the user's, named like the sweep's scratch
    (run_dir / "notes.txt").write_text("mine")
    result = finetune_tiny(tmp_path, *task, "task.name=auto", "optim.lr=auto",
                           "optim.lr_auto_grid=[1e-6,1e-3]")  # fmt: skip
    out = capsys.readouterr().out

    record = result["lr_auto"]
    assert record == json.loads((run_dir / RECORD).read_text())
    assert record["grid"] == [1e-6, 1e-3] and record["steps"] == 2  # half of 64 / 16 batches
    assert [t["lr"] for t in record["scores"]] == record["grid"] and record["seconds"] > 0
    assert all(set(t) == {"lr", "accuracy", "degenerate", "seconds"} for t in record["scores"])
    assert record["chosen"] == record["scores"][best_trial(record["scores"], "accuracy")]["lr"]
    assert result["lr"] == record["chosen"]
    assert json.loads((run_dir / "metrics.json").read_text())["lr_auto"] == record
    assert "lr auto: 2 trials of 2 steps (0.5 epoch) each, picked by dev accuracy" in out
    assert sum("<- chosen" in line for line in out.splitlines()) == 1
    assert f"  lr    {record['chosen']:g}, chosen by optim.lr=auto" in out

    # The sweep leaves only its record; what it did not create stays.
    plain_dir = tmp_path / "finetune" / "plain-pretrained-s1234"
    plain = finetune_tiny(tmp_path, *task, "task.name=plain", f"optim.lr={record['chosen']}")
    files = {p.name for p in run_dir.iterdir()}
    assert files == {p.name for p in plain_dir.iterdir()} | {RECORD, "notes.txt", ".lr_auto-mine"}
    # From the same weights, head and data order: the run is the one at the chosen lr.
    assert plain["lr_auto"] is None and plain["lr"] == record["chosen"]
    assert result["test"] == plain["test"] and result["dev"] == plain["dev"]


def test_the_default_lr_follows_the_models_width(tiny_model, sequence_files, tmp_path, capsys):
    assert [default_lr(h) for h in (128, 256, 512, 768, 1024)] == [1e-3, 3e-4, 1e-4, 5e-5, 3e-5]
    assert FinetuneConfig().optim.lr is None  # the schema's default (the tests' runs set 1e-3)
    result = finetune_tiny(tmp_path, "task=sequence_classification", f"model_path={tiny_model}",
                           "task.name=default", "trainer.max_epochs=1", "optim.lr=null",
                           "task.max_train_examples=32", *sequence_files)  # fmt: skip
    assert result["lr"] == 1e-3  # the test model is bert-tiny-wide (128)
    assert "  lr    0.001, the default for hidden size 128" in capsys.readouterr().out
