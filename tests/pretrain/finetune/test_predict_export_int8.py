"""A fine-tuned run in the forms it is deployed in: its `bert-export` directory as `bert-predict
model=` (the run's own predictions) and as `bert-finetune init=finetuned` (its head kept; the
label sets must match), and `bert-predict quantize=int8` (every Linear layer replaced, the labels
of fp32 kept); every refusal in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.errors import UserError
from pretrain.finetune.data import SEQUENCE, TOKEN
from pretrain.finetune.hf_import import head_for_task
from tests.finetune_rows import finetune_tiny
from tests.pretrain.finetune.test_predict import predict, task_path


@pytest.fixture(scope="module")
def run(tiny_model, sequence_files, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("deploy")
    finetune_tiny(work, "task=sequence_classification", "task.name=kw",
                  f"model_path={tiny_model}", "trainer.max_epochs=3", *sequence_files)  # fmt: skip
    return work / "finetune" / "kw-pretrained-s1234"


@pytest.fixture(scope="module")
def export(run, tmp_path_factory) -> Path:
    from pretrain.export import export_finetuned

    return export_finetuned(run, tmp_path_factory.mktemp("deploy_export") / "kw")


def probabilities(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([[r["probabilities"][k] for k in ("no", "yes")] for r in rows])


def test_the_export_predicts_what_its_run_predicts(run, export, sequence_files, tmp_path):
    test = f"input={task_path(sequence_files, 'test')}"
    ours = predict(tmp_path, f"model={run}", test, f"output={tmp_path / 'run.jsonl'}")
    exported = predict(tmp_path, f"model={export}", test, f"output={tmp_path / 'hf.jsonl'}")
    assert [r["label"] for r in exported] == [r["label"] for r in ours]
    torch.testing.assert_close(probabilities(exported), probabilities(ours), atol=1e-5, rtol=0)


def test_an_inconsistent_export_is_refused_in_one_line(export, tmp_path):
    import shutil

    for name, edit, says in (
        ("three", {"id2label": {"0": "no", "1": "yes", "2": "maybe"}, "label2id": None},
         r"id2label names 3 labels but classifier.weight is \(2, 128\)"),
        ("swapped", {"label2id": {"no": 1, "yes": 0}}, "label2id"),
        ("gaps", {"id2label": {"0": "no", "5": "yes"}, "label2id": None}, "are not the ids"),
    ):  # fmt: skip
        broken = tmp_path / name
        shutil.copytree(export, broken)
        config = json.loads((broken / "config.json").read_text())
        config.update(edit)
        (broken / "config.json").write_text(json.dumps(config))
        with pytest.raises(UserError, match=says) as err:
            predict(tmp_path, f"model={broken}", "text=hello")
        assert "\n" not in str(err.value)


def test_int8_replaces_every_linear_and_keeps_the_labels(run, sequence_files, tmp_path):
    from torch import nn
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from pretrain.finetune.finetuned import load_finetuned
    from pretrain.finetune.predict import quantize_int8

    module = load_finetuned(run).module
    linears = sum(isinstance(m, nn.Linear) for m in module.modules())
    assert linears == 2 * 6 + 2  # per layer Q, K, V, out, FFN in/out; the pooler; the head
    assert quantize_int8(module) == linears
    assert sum(isinstance(m, Int8Linear) for m in module.modules()) == linears
    assert not any(isinstance(m, nn.Linear) for m in module.modules())

    test = f"input={task_path(sequence_files, 'test')}"
    fp32 = predict(tmp_path, f"model={run}", test, f"output={tmp_path / 'fp32.jsonl'}")
    int8 = predict(tmp_path, f"model={run}", test, f"output={tmp_path / 'int8.jsonl'}",
                   "quantize=int8")  # fmt: skip
    agree = sum(a["label"] == b["label"] for a, b in zip(fp32, int8, strict=True))
    assert agree >= 0.9 * len(fp32)
    gap = (probabilities(int8) - probabilities(fp32)).abs()
    assert 0 < gap.max() < 0.1  # int8 arithmetic: close, not equal


def test_int8_refusals_are_one_line(run, tmp_path):
    from pretrain.finetune.predict import int8_engine

    with pytest.raises(UserError, match=r"quantize=int8 runs on the CPU only .*device=cuda"):
        predict(tmp_path, f"model={run}", "text=hello", "quantize=int8", "device=cuda")
    with pytest.raises(UserError, match=r"no quantized CPU kernels .*use quantize=none"):
        int8_engine(["none"])
    assert int8_engine(["qnnpack", "none"]) in ("qnnpack", torch.backends.quantized.engine)
    with pytest.raises(UserError, match=r"quantize='int4' is unknown; use none or int8"):
        predict(tmp_path, f"model={run}", "text=hello", "quantize=int4")


def test_finetuning_from_the_export_keeps_its_head(export, sequence_files, tmp_path):
    from pretrain.finetune.finetuned import load_finetuned

    # One batch at a vanishing learning rate: the run's head is the export's, and already right.
    metrics = finetune_tiny(tmp_path, "task=sequence_classification", "task.name=kw",
                            f"model_path={export}", "init=finetuned", "trainer.max_epochs=1",
                            "trainer.limit_train_batches=1", "optim.lr=1e-12",
                            *sequence_files)  # fmt: skip
    assert metrics["dev"]["accuracy"] >= 0.9 and metrics["init"] == "finetuned"
    head = load_finetuned(tmp_path / "finetune" / "kw-finetuned-s1234").head
    weight, bias = head_for_task(export, SEQUENCE, ["no", "yes"], "cls")
    torch.testing.assert_close(head.weight.detach(), weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(head.bias.detach(), bias, atol=1e-6, rtol=0)


def test_the_head_follows_the_tasks_label_order_and_a_different_label_set_is_refused(
    run, export, sequence_files, tmp_path
):
    weight, bias = head_for_task(export, SEQUENCE, ["no", "yes"], "cls")
    swapped_weight, swapped_bias = head_for_task(export, SEQUENCE, ["yes", "no"], "cls")
    assert torch.equal(swapped_weight, weight.flip(0)) and torch.equal(swapped_bias, bias.flip(0))
    for args, says in (
        ((export, SEQUENCE, ["no", "yes", "maybe"], "cls"),
         r"the task's labels \['no', 'yes', 'maybe'\] are not model=.*'s \['no', 'yes'\] "
         r"\(config.json id2label\); give task.labels= .* or use init=pretrained"),
        ((export, TOKEN, ["O", "B-KEY"], "cls"),
         r"is a sequence_classification model but task.type=token_classification"),
        ((export, SEQUENCE, ["no", "yes"], "mean"), r"not pooling=mean; use pooling=cls"),
        ((run, SEQUENCE, ["no", "yes"], "cls"),
         r"not a Hugging Face classifier .*bert-export checkpoint=RUN output_dir=DIR"),
    ):  # fmt: skip
        with pytest.raises(UserError, match=says):
            head_for_task(*args)
    # a fine-tuned run directory itself is not a model to start from: export it first
    with pytest.raises(UserError, match=r"is a bert-finetune run, not a pretraining run; export"):
        finetune_tiny(tmp_path, "task=sequence_classification", "task.name=kw",
                      f"model_path={run}", *sequence_files)  # fmt: skip
    # the same refusal from bert-finetune itself, before anything is trained
    with pytest.raises(UserError, match=r"the task's labels .* are not model="):
        finetune_tiny(tmp_path, "task=sequence_classification", "task.name=kw",
                      f"model_path={export}", "init=finetuned", "task.labels=[no,yes,maybe]",
                      *sequence_files)  # fmt: skip
