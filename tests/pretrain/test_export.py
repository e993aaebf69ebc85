"""Export to and import from the Hugging Face format: loading, parity of outputs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pretrain.errors import UserError
from pretrain.export import export_hf
from pretrain.model import hf_config_kwargs
from pretrain.weights import load_hf_dir, load_pretrained

transformers = pytest.importorskip("transformers")

PAIRS = [
    ("The president spoke to the nation.", "Congress listened in silence."),
    ("A short one.", "And a much longer second segment, with commas, numbers like 1999 and names."),
    ("Functions return values.", "Modules group them."),
]


@pytest.fixture(scope="module")
def exported(pretrained_run, tmp_path_factory):
    return export_hf(load_pretrained(pretrained_run), tmp_path_factory.mktemp("hf") / "model")


def encode(tokenizer_dir):
    tok = transformers.BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    return tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")


def test_export_loads_in_transformers_with_identical_outputs(pretrained_run, exported):
    ours = load_pretrained(pretrained_run)
    hf, info = transformers.BertForPreTraining.from_pretrained(
        str(exported), output_loading_info=True
    )
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    batch = encode(exported)
    assert (batch["attention_mask"] == 0).any()  # padded pairs
    with torch.no_grad():
        theirs = hf.eval()(**batch, output_hidden_states=True)
        o = ours.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (o.mlm_logits[real] - theirs.prediction_logits[real]).abs().max() <= 1e-4
    assert (o.nsp_logits - theirs.seq_relationship_logits).abs().max() <= 1e-4
    pooled = hf.bert(**batch).pooler_output
    assert (o.pooled - pooled).abs().max() <= 1e-4


def test_export_works_with_the_auto_classes_and_fill_mask(exported):
    transformers.AutoModel.from_pretrained(str(exported))
    transformers.AutoModelForMaskedLM.from_pretrained(str(exported))
    transformers.BertForSequenceClassification.from_pretrained(str(exported), num_labels=2)
    transformers.BertForTokenClassification.from_pretrained(str(exported), num_labels=5)
    fill = transformers.pipeline("fill-mask", model=str(exported))
    predictions = fill("the president spoke to the [MASK].")
    assert len(predictions) == 5 and all(p["token_str"] for p in predictions)


def test_model_card_records_config_manifest_and_metrics(exported):
    card = (exported / "README.md").read_text()
    assert "val/mlm_acc" in card and "max_seq_length" in card and "num_layers" in card
    assert json.loads((exported / "config.json").read_text())["model_type"] == "bert"


def test_import_from_a_transformers_model_matches_its_outputs(exported, tmp_path):
    ours_cfg = load_hf_dir(exported).config
    torch.manual_seed(1)
    hf = transformers.BertForPreTraining(
        transformers.BertConfig(**hf_config_kwargs(ours_cfg))
    ).eval()
    hf.save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "hf" / name).write_bytes((exported / name).read_bytes())
    imported = load_pretrained(tmp_path / "hf")
    batch = encode(tmp_path / "hf")
    with torch.no_grad():
        theirs = hf(**batch)
        o = imported.model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (o.mlm_logits[real] - theirs.prediction_logits[real]).abs().max() <= 1e-4
    assert (o.nsp_logits - theirs.seq_relationship_logits).abs().max() <= 1e-4


def test_import_of_an_encoder_only_directory_keeps_fresh_heads(exported, tmp_path):
    transformers.AutoModel.from_pretrained(str(exported)).save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "vocab.txt").write_bytes((exported / "vocab.txt").read_bytes())
    imported = load_pretrained(tmp_path / "enc")
    full = load_pretrained(exported)
    torch.testing.assert_close(
        imported.model.bert.layers[0].ffn_in.weight, full.model.bert.layers[0].ffn_in.weight
    )


def test_bad_inputs_name_the_path(tmp_path, exported):
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"bad\.ckpt is not a checkpoint"):
        load_pretrained(bad)
    other = tmp_path / "roberta"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(UserError, match="only 'bert'"):
        load_pretrained(other)
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoint"):
        load_pretrained(empty_run)


@pytest.mark.e2e
def test_bert_export_command(pretrained_run, tmp_path, app_env):
    out = tmp_path / "exported"
    cmd = [
        sys.executable,
        "-m",
        "pretrain.export",
        f"checkpoint={pretrained_run}",
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, env=app_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
    proc = subprocess.run(
        [*cmd[:-2], f"checkpoint={tmp_path / 'nope'}", f"output_dir={out}"],
        env=app_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.e2e
def test_continued_pretraining_starts_from_an_exported_model(
    exported, prepared_english, tmp_path, app_env
):
    common = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
              f"data.dir={prepared_english}", f"init_from={exported}"]  # fmt: skip
    # One step at a negligible learning rate: the weights stay those of the export.
    proc = subprocess.run([*common, "name=cont", "trainer.max_steps=1", "optim.lr=1e-12",
                           "trainer.val_check_interval=1", "trainer.checkpoint_every_n_steps=1"],
                          env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized from" in proc.stdout + proc.stderr
    after = load_pretrained(tmp_path / "runs" / "cont").model.state_dict()
    for name, value in load_pretrained(exported).model.state_dict().items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6, msg=name)

    proc = subprocess.run([*common, "name=other", "model.num_layers=3"], env=app_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "model.num_layers: 2 there, 3 here" in proc.stderr


def test_export_never_replaces_a_directory_that_is_not_an_export(pretrained_run, tmp_path):
    pretrained = load_pretrained(pretrained_run)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"not empty and not an earlier export .*notes\.txt"):
            export_hf(pretrained, work, overwrite=overwrite)
    assert sorted(p.name for p in work.iterdir()) == ["data", "notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"
    # An export with a file of the user's added is not an export any more.
    out = export_hf(pretrained, tmp_path / "hf")
    (out / "my_results.csv").write_text("1,2")
    with pytest.raises(UserError, match=r"my_results\.csv"):
        export_hf(pretrained, out, overwrite=True)
    assert (out / "my_results.csv").is_file()
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_export_replaces_an_earlier_export_only_with_overwrite(pretrained_run, tmp_path):
    pretrained = load_pretrained(pretrained_run)
    out = export_hf(pretrained, tmp_path / "hf")
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="holds an earlier export; pass overwrite=true"):
        export_hf(pretrained, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_hf(pretrained, empty)  # an empty directory holds nothing to lose
    with torch.no_grad():
        for p in pretrained.model.parameters():
            p.add_(1.0)
    export_hf(pretrained, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert not list(tmp_path.glob(".*"))


def test_exported_files_follow_the_umask(pretrained_run, tmp_path):
    old = os.umask(0o022)
    try:
        out = export_hf(load_pretrained(pretrained_run), tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes
