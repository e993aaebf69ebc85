"""A fine-tuned model in the Hugging Face form read back: the label list and `classifier.*` tensors
of a `BertForSequenceClassification` / `BertForTokenClassification` directory (what `bert-export`
writes for a `bert-finetune` run, `hf_export.py`), for `bert-predict model=EXPORT`
(`finetuned.load_exported`) and `bert-finetune init=finetuned`, which continues from that head
(`head_for_task`: the task's labels must be the export's). Only the classifier is read here; the
encoder is `pretrain/weights.py:load_hf_dir`'s."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.errors import UserError
from pretrain.finetune.data import SEQUENCE, TOKEN
from pretrain.integrity import load_weights_only

HF_CLASSIFIERS = {
    "BertForSequenceClassification": SEQUENCE,
    "BertForTokenClassification": TOKEN,
}
"""What `bert-export` writes a fine-tuned run as (`hf_export.py`), and the task type of each."""


@dataclass
class ExportedHead:
    """The classification head of a Hugging Face classifier directory."""

    task_type: str
    labels: list[str]
    """`config.json`'s `id2label`, in id order."""
    weight: torch.Tensor
    """(labels, hidden): `classifier.weight`."""
    bias: torch.Tensor
    """(labels,): `classifier.bias`."""
    task_name: str
    """`config.json`'s `finetuning_task` (bert-export writes the run's `task.name`)."""


def hf_architecture(path: Path) -> str | None:
    """`architectures[0]` of a Hugging Face directory's `config.json`; None for anything else."""
    config = Path(path) / "config.json"
    if not (Path(path).is_dir() and config.is_file()):
        return None
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures")
    except (json.JSONDecodeError, AttributeError):
        return None
    return architectures[0] if isinstance(architectures, list) and architectures else None


def is_hf_classifier(path: Path) -> bool:
    """A Hugging Face `BertForSequenceClassification` / `BertForTokenClassification` directory,
    such as `bert-export` writes for a fine-tuned run."""
    return hf_architecture(path) in HF_CLASSIFIERS


def read_exported_head(path: str | Path) -> ExportedHead:
    """The labels and `classifier.*` tensors of a Hugging Face classifier directory; one-line
    errors when its `config.json` and its weights disagree."""
    path = Path(path)
    architecture = hf_architecture(path)
    if architecture not in HF_CLASSIFIERS:
        raise UserError(
            f"{path} is not a Hugging Face classifier (config.json architectures: "
            f"{architecture!r}); give a bert-export directory of a bert-finetune run "
            f"({' or '.join(HF_CLASSIFIERS)})"
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise UserError(
            f"{path}/config.json: id2label's keys {sorted(id2label)} are not the ids 0..."
            f"{len(id2label) - 1}; write one label per id, as bert-export does"
        ) from None
    label2id = config.get("label2id")
    if label2id and {str(k): int(v) for k, v in label2id.items()} != {
        label: i for i, label in enumerate(labels)
    }:
        raise UserError(
            f"{path}/config.json: label2id {label2id} is not the inverse of id2label {id2label}; "
            "make them agree (or delete label2id)"
        )
    weight, bias = _classifier_tensors(path)
    if not labels or weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise UserError(
            f"{path}: config.json's id2label names {len(labels)} labels but classifier.weight is "
            f"{tuple(weight.shape)}; export the run again (bert-export overwrite=true)"
        )
    name = str(config.get("finetuning_task") or path.name)
    return ExportedHead(HF_CLASSIFIERS[architecture], labels, weight, bias, name)


def _classifier_tensors(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """`classifier.weight` (labels, hidden) and `classifier.bias` (labels,), read alone."""
    keys = ("classifier.weight", "classifier.bias")
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            found = {k: f.get_tensor(k) for k in keys if k in f.keys()}  # noqa: SIM118
    elif (path / "pytorch_model.bin").is_file():
        weights = load_weights_only(path / "pytorch_model.bin")
        found = {k: weights[k] for k in keys if k in weights}
    else:
        raise UserError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    if len(found) != 2:
        raise UserError(
            f"{path} lacks {sorted(set(keys) - set(found))}: its weights are not a "
            "BertFor{Sequence,Token}Classification's; export the run again with bert-export"
        )
    return found["classifier.weight"].float(), found["classifier.bias"].float()


FRESH_HEAD = "or use init=pretrained to train a new head on its encoder"


def check_finetuned_source(path: str | Path) -> None:
    """`init=finetuned` needs a Hugging Face classifier directory; refused in one line otherwise
    (before anything is loaded)."""
    if not is_hf_classifier(Path(path)):
        raise UserError(
            f"init=finetuned continues from a fine-tuned model's head, and model={path} is not a "
            f"Hugging Face classifier ({' or '.join(HF_CLASSIFIERS)}); export the bert-finetune "
            f"run first (bert-export checkpoint=RUN output_dir=DIR) and give DIR, {FRESH_HEAD}"
        )


def head_for_task(
    path: str | Path, task_type: str, labels: list[str], pooling: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """`init=finetuned`: the export's `classifier.weight` (labels, hidden) and `bias` (labels,)
    with their rows in the order of the task's `labels`; refused in one line unless the export is
    a classifier of the same task type over the same label set (and, for sequences, reads the
    pooled [CLS] output as `pooling=cls` does)."""
    check_finetuned_source(path)
    head = read_exported_head(path)
    if head.task_type != task_type:
        raise UserError(
            f"init=finetuned: model={path} is a {head.task_type} model but task.type="
            f"{task_type}; fine-tune it on a {head.task_type} task, {FRESH_HEAD}"
        )
    if task_type == SEQUENCE and pooling != "cls":
        raise UserError(
            f"init=finetuned: model={path}'s head reads the pooled [CLS] output, not "
            f"pooling={pooling}; use pooling=cls, {FRESH_HEAD}"
        )
    if sorted(head.labels) != sorted(labels):
        raise UserError(
            f"init=finetuned: the task's labels {labels} are not model={path}'s "
            f"{head.labels} (config.json id2label); give task.labels= the export's labels, "
            f"{FRESH_HEAD}"
        )
    rows = [head.labels.index(label) for label in labels]  # the task's label order
    return head.weight[rows], head.bias[rows]
