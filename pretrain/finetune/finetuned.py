"""A finished `bert-finetune` run, loaded for use: the encoder with its trained head (the best
epoch's checkpoint, checksum-verified and read weights-only), the tokenizer, the label list, the
task type and the maximum length it was trained with (`load_finetuned`), or the same read from the
run's `bert-export` directory (`load_exported`); and the bare encoder of any model, fine-tuned or
not, for embeddings (`load_encoder`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pretrain.errors import UserError
from pretrain.finetune.config import FinetuneConfig, TaskConfig, to_typed
from pretrain.finetune.encoder import build_encoder, load_tokenizer
from pretrain.finetune.hf_import import is_hf_classifier, read_exported_head
from pretrain.finetune.module import FinetuneModule
from pretrain.integrity import load_weights_only, verify_checkpoint
from pretrain.model import BertConfig, BertModel

BEST = Path("checkpoints") / "best.ckpt"


@dataclass
class Finetuned:
    """A fine-tuned run read back: encoder and head with the best epoch's weights, ready to use."""

    module: FinetuneModule
    """Encoder + head, in eval mode, on the CPU (`module(batch)` gives the logits; a `head=crf`
    run's are the CRF's emissions, decoded by `module.predictions` / `module.crf_outputs`)."""
    config: BertConfig
    """The encoder's architecture, with the run's dropout overrides."""
    run_config: FinetuneConfig
    labels: list[str]
    tokenizer_dir: Path
    tokenizer: object
    """The `tokenizers.Tokenizer` the model was trained with."""
    run_dir: Path
    checkpoint: Path

    @property
    def task_type(self) -> str:
        """`sequence_classification` or `token_classification`."""
        return self.run_config.task.type

    @property
    def max_length(self) -> int:
        """The run's `task.max_seq_length`: WordPieces per input, [CLS]/[SEP] included."""
        return int(self.run_config.task.max_seq_length)

    @property
    def encoder(self) -> BertModel:
        return self.module.encoder

    @property
    def head(self) -> torch.nn.Linear:
        return self.module.head

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, labels) for sequence tasks, (B, T, labels) for token tasks, as in evaluation."""
        return self.module.eval()(batch)


@dataclass
class Encoder:
    """An encoder for embeddings, from a fine-tuned run or any model `load_pretrained` reads."""

    encoder: BertModel
    tokenizer: object
    max_length: int
    """The fine-tuned run's `task.max_seq_length`, else the model's `max_position_embeddings`."""


def is_finetuned_run(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "labels.json").is_file()


def read_run_config(run_dir: Path) -> FinetuneConfig:
    """The run's saved `config.yaml` as the typed config it ran with."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    return to_typed(OmegaConf.merge(OmegaConf.structured(FinetuneConfig), saved))


def load_finetuned(path: str | Path) -> Finetuned:
    """A `bert-finetune` run directory (`${work_dir}/finetune/NAME`, or its
    `checkpoints/best.ckpt`) as a model with its head: the encoder built as the run built it
    (`build_encoder`: architecture, dropout and tokenizer of the model it started from), then the
    best epoch's weights, checksum-verified and read weights-only, loaded strictly."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"model={path} does not exist; give a run directory written by bert-finetune "
            "(e.g. work/finetune/NAME)"
        )
    if is_hf_classifier(path):
        return load_exported(path)
    run_dir = path if path.is_dir() else path.parent.parent
    checkpoint = run_dir / BEST if path.is_dir() else path
    if not is_finetuned_run(run_dir):
        raise UserError(
            f"model={path} is not a bert-finetune run (no labels.json, so no classification "
            f"head) nor its bert-export directory; fine-tune it first (bert-finetune "
            f"model={path} task=...), give the fine-tuned run directory (work/finetune/NAME), or "
            "use task=embed for its vectors"
        )
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml; rerun bert-finetune")
    if not checkpoint.is_file():
        raise UserError(
            f"{run_dir} has no {BEST}: its fine-tuning did not finish; rerun bert-finetune"
        )
    cfg = read_run_config(run_dir)
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    if not Path(cfg.model_path).exists():
        raise UserError(
            f"{run_dir} was fine-tuned from {cfg.model_path} (model_path in its config.yaml), "
            "which is gone; its architecture and tokenizer are read from there: restore it"
        )
    encoder, config, tokenizer_dir, _ = build_encoder(cfg)
    verify_checkpoint(checkpoint)
    saved = load_weights_only(checkpoint)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{checkpoint} is not a bert-finetune checkpoint (no state_dict)")
    # The head as the run's config.yaml records it (`head`: softmax, or crf with its transitions).
    module = FinetuneModule(
        encoder, cfg.task.type, len(labels), 0.0, cfg.optim, cfg.schedule, 1, None, cfg.pooling,
        head=cfg.head, labels=labels,
    )  # fmt: skip
    missing, unexpected = module.load_state_dict(
        {k: v.float() for k, v in state.items()}, strict=False
    )
    if missing or unexpected:
        raise UserError(
            f"{checkpoint} does not hold this run's encoder and linear head over "
            f"{len(labels)} labels, head={cfg.head} (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); give the checkpoint bert-finetune wrote for this run"
        )
    return Finetuned(
        module.eval(),
        config,
        cfg,
        labels,
        Path(tokenizer_dir),
        load_tokenizer(Path(tokenizer_dir), config),
        run_dir,
        checkpoint,
    )


def load_encoder(path: str | Path) -> Encoder:
    """The encoder of a fine-tuned run, or of anything `pretrain.weights.load_pretrained` reads
    (a checkpoint, a pretraining run directory, an exported Hugging Face directory)."""
    if is_finetuned_run(Path(path)):
        run = load_finetuned(path)
        return Encoder(run.module.encoder, run.tokenizer, run.max_length)
    from pretrain.weights import load_pretrained

    pretrained = load_pretrained(path)
    tokenizer = load_tokenizer(Path(pretrained.tokenizer_dir), pretrained.config)
    return Encoder(
        pretrained.model.bert.eval(), tokenizer, pretrained.config.max_position_embeddings
    )


# ---------------------------------------------------------------- the run's Hugging Face export


def load_exported(path: str | Path) -> Finetuned:
    """A fine-tuned run's `bert-export` directory (or any Hugging Face BERT sequence/token
    classifier with a `tokenizer.json`) as the run `load_finetuned` gives: the encoder
    (`pretrain.weights.load_hf_dir`), a linear head with the export's `classifier.*` weights and
    `id2label` labels, over the pooled [CLS] output for sequences (transformers' head). Its
    `max_length` is the model's `max_position_embeddings` (capped by the tokenizer's
    `model_max_length`): the export does not record the run's `task.max_seq_length`."""
    from pretrain.weights import load_hf_dir

    path = Path(path)
    head = read_exported_head(path)  # labels and classifier checked before the encoder is read
    pretrained = load_hf_dir(path)
    limit = pretrained.config.max_position_embeddings
    settings = path / "tokenizer_config.json"
    if settings.is_file():
        limit = min(limit, int(json.loads(settings.read_text()).get("model_max_length", limit)))
    cfg = FinetuneConfig(
        model_path=str(path),
        task=TaskConfig(name=head.task_name, type=head.task_type, max_seq_length=limit),
    )
    module = FinetuneModule(
        pretrained.model.bert, head.task_type, len(head.labels), 0.0, cfg.optim, cfg.schedule, 1,
        None, "cls",
    )  # fmt: skip
    with torch.no_grad():
        module.head.weight.copy_(head.weight)
        module.head.bias.copy_(head.bias)
    return Finetuned(
        module.eval(),
        pretrained.config,
        cfg,
        head.labels,
        path,
        load_tokenizer(path, pretrained.config),
        path,
        path / "model.safetensors",
    )
