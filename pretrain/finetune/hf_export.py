"""The fine-tuned side of `bert-export`: a `bert-finetune` run directory (its best-epoch checkpoint,
head, labels, config and metrics) as the tensors, `config.json` and model card of a Hugging Face
`BertForSequenceClassification` / `BertForTokenClassification`. Writing the directory is
`pretrain/export.py`'s; heads transformers has no class for (`pooling=mean`, `head=crf`, pre-LN
encoders, any other layout) are refused here with one line.

No `transformers` import: the format is plain JSON and tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.errors import UserError
from pretrain.finetune.crf import CRF
from pretrain.finetune.data import SEQUENCE, TOKEN
from pretrain.finetune.finetuned import Finetuned, load_finetuned
from pretrain.model import hf_config_kwargs, hf_state_dict_key_map

HF_ARCHITECTURES = {
    SEQUENCE: "BertForSequenceClassification",
    TOKEN: "BertForTokenClassification",
}
PIPELINE_TAGS = {SEQUENCE: "text-classification", TOKEN: "token-classification"}
USE_DIRECTLY = (
    "the run's checkpoint can still be used directly (bert-predict, or load it as a fine-tuned run)"
)


# ---------------------------------------------------------------- the Hugging Face form


@dataclass
class HFClassifier:
    """What `bert-export` writes for a fine-tuned run."""

    tensors: dict[str, torch.Tensor]
    config: dict
    tokenizer_dir: Path
    model_card: str
    source: Path


def read_for_export(path: str | Path) -> HFClassifier:
    """A `bert-finetune` run directory (or its `checkpoints/best.ckpt`) in the Hugging Face form."""
    return hf_classifier(load_finetuned(path))


def check_representable(run: Finetuned) -> None:
    """Refuse, in one line, a fine-tuned model transformers has no class for."""
    where = f"{run.run_dir}"
    if run.task_type not in HF_ARCHITECTURES:
        raise UserError(
            f"{where}: task.type={run.task_type!r} has no transformers class to export to; "
            f"{USE_DIRECTLY}"
        )
    if run.run_config.head == CRF:
        raise UserError(
            f"{where}: head=crf cannot be a plain BertForTokenClassification (transformers has "
            "no CRF: its transitions and Viterbi decoding would be lost and the tags could "
            f"break BIO); only head=softmax runs export; {USE_DIRECTLY}"
        )
    if run.task_type == SEQUENCE and run.run_config.pooling != "cls":
        raise UserError(
            f"{where}: pooling={run.run_config.pooling!r} has no transformers equivalent "
            "(BertForSequenceClassification reads the [CLS] pooler output); only pooling=cls runs "
            f"export; {USE_DIRECTLY}"
        )
    if run.config.norm_position != "post":
        raise UserError(
            f"{where}: a model.norm_position={run.config.norm_position!r} encoder has no Hugging "
            f"Face BERT equivalent (transformers' BertModel is post-LN); {USE_DIRECTLY}"
        )


def hf_classifier(run: Finetuned) -> HFClassifier:
    """The run's weights under transformers' names, its `config.json` and model card."""
    check_representable(run)
    key_map = hf_state_dict_key_map(run.config)  # names of our BertForPreTraining -> theirs
    tensors = {}
    for key, value in run.encoder.state_dict().items():
        if run.task_type == TOKEN and key.startswith("pooler."):
            continue  # BertForTokenClassification's BertModel has no pooler
        tensors[key_map[f"bert.{key}"]] = value.detach().float().contiguous()
    tensors["classifier.weight"] = run.head.weight.detach().float().contiguous()
    tensors["classifier.bias"] = run.head.bias.detach().float().contiguous()
    cfg = run.run_config
    dropout = (
        run.config.hidden_dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
    )
    config = {
        "architectures": [HF_ARCHITECTURES[run.task_type]],
        "model_type": "bert",
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        **hf_config_kwargs(run.config),
        "classifier_dropout": dropout,
        "id2label": {str(i): label for i, label in enumerate(run.labels)},
        "label2id": {label: i for i, label in enumerate(run.labels)},
        "finetuning_task": cfg.task.name,
    }
    if run.task_type == SEQUENCE:
        config["problem_type"] = "single_label_classification"
    return HFClassifier(tensors, config, run.tokenizer_dir, model_card(run), run.checkpoint)


def model_card(run: Finetuned) -> str:
    """README.md: task, data, labels and the run's dev/test metrics (from `metrics.json`)."""
    cfg = run.run_config
    task = cfg.task
    tag = PIPELINE_TAGS[run.task_type]
    metrics_path = run.run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    data = {
        "source": task.source,
        **{s: getattr(task, s, None) for s in ("dataset", "train", "dev", "test")},
        "examples": metrics.get("examples"),
        "max_seq_length": task.max_seq_length,
    }
    sections = [
        f"---\nlibrary_name: transformers\npipeline_tag: {tag}\ntags: [bert, {tag}]\n---\n",
        f"# BERT fine-tuned on {task.name} ({run.task_type.replace('_', ' ')})\n",
        f"Fine-tuned with bert-finetune from `{cfg.model_path}` (init={cfg.init}, seed {cfg.seed}); "
        f"exported from `{run.checkpoint}`.\n",
        "```python\nfrom transformers import pipeline\n"
        + (
            f'pipeline("{tag}", model="<this directory>", top_k=None)\n'
            if run.task_type == SEQUENCE
            else f'pipeline("{tag}", model="<this directory>", aggregation_strategy="first")\n'
        )
        + "```\n",
        "## Task\n",
        f"- type: {run.task_type}\n- labels: {', '.join(run.labels)}\n"
        f"- selection metric: dev {task.metric}"
        + (f", best of {metrics['epochs_run']} epochs" if "epochs_run" in metrics else "")
        + "\n",
        "## Data\n",
        "```json\n" + json.dumps({k: v for k, v in data.items() if v}, indent=2) + "\n```\n",
    ]
    for split in ("dev", "test"):
        if split in metrics:
            rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics[split].items())
            sections += [
                f"## {split.capitalize()} metrics\n",
                f"| metric | value |\n|---|---|\n{rows}\n",
            ]
    sections += [
        "## Fine-tuning config\n",
        "```yaml\n" + (run.run_dir / "config.yaml").read_text().strip() + "\n```\n",
    ]
    return "\n".join(sections)
