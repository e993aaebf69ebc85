"""Load any model this project trains or imports, by path: a project checkpoint (a `.ckpt` file, a
DeepSpeed ZeRO checkpoint directory, consolidated in memory, or a `bert-consolidate` file), a run
directory (its newest checkpoint) or a Hugging Face BERT directory, as our `BertForPreTraining`
with its tokenizer (`load_pretrained`). Checkpoints are verified against their checksums and read
weights-only (`pretrain/integrity.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pretrain.errors import UserError
from pretrain.integrity import load_weights_only, verify_checkpoint
from pretrain.model import BertConfig, BertForPreTraining, hf_state_dict_key_map
from pretrain.tokenizer_check import tokenizer_sha256

# Our tied decoder weight: the same tensor as the word embeddings, stored once in the export.
TIED_KEY = "mlm.word_embeddings.weight"
MODULE_PREFIX = "model."  # attribute of BertPretrainingModule holding the plain model


@dataclass
class Pretrained:
    """A model ready to use, and where it came from."""

    model: BertForPreTraining
    config: BertConfig
    tokenizer_dir: Path
    source: Path
    """The checkpoint file or Hugging Face directory actually read."""
    run_dir: Path | None = None
    """The training run's directory, for project checkpoints."""


# ---------------------------------------------------------------- reading project checkpoints


def newest_checkpoint(run_dir: Path) -> Path:
    """`checkpoints/last.ckpt`, else the highest-step `step*.ckpt` of a run directory."""
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / "last.ckpt").exists():
        return ckpt_dir / "last.ckpt"
    steps = sorted(ckpt_dir.glob("step*.ckpt"))
    if not steps and (ckpt_dir / "best.ckpt").is_file() and (run_dir / "labels.json").is_file():
        raise UserError(
            f"{run_dir} is a bert-finetune run, not a pretraining run; export it first "
            f"(bert-export checkpoint={run_dir} output_dir=DIR) and give model=DIR "
            "(with init=finetuned to keep its trained head)"
        )
    if not steps:
        raise UserError(
            f"run directory {run_dir} has no checkpoint under checkpoints/; train it first"
        )
    return steps[-1]


def _config_from_hparams(saved: dict, source: Path) -> BertConfig:
    known = {f.name for f in fields(BertConfig)}
    try:
        return BertConfig(**{k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: its model config is not usable ({err})") from None


def _tokenizer_dir_of_run(run_dir: Path) -> Path:
    """The tokenizer the run trained with, from its saved resolved config."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(
            f"{run_dir} has no config.yaml, so its tokenizer is unknown; pass a run "
            f"directory written by bert-pretrain"
        )
    data = OmegaConf.load(config_path).data
    tokenizer_dir = Path(data.tokenizer_dir) if data.tokenizer_dir else Path(data.dir) / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(
            f"the tokenizer of run {run_dir} ({tokenizer_dir}) is gone; restore the data "
            f"directory or set data.tokenizer_dir"
        )
    manifest_path = run_dir / "data_manifest.json"
    if manifest_path.is_file():  # the data (and tokenizer) may have been rebuilt since the run
        expected = json.loads(manifest_path.read_text())["tokenizer"]["sha256"]
        if tokenizer_sha256(tokenizer_dir) != expected:
            raise UserError(
                f"{tokenizer_dir} is not the tokenizer run {run_dir} trained with "
                f"(its data_manifest.json says sha256 {expected[:12]}…); restore it"
            )
    return tokenizer_dir


def load_project_checkpoint(path: Path) -> Pretrained:
    """A `bert-pretrain` checkpoint: a run directory's `checkpoints/*.ckpt` file, a DeepSpeed
    checkpoint directory of the same name (consolidated in memory, on the CPU), or a
    `bert-consolidate` output file. Verified against its checksums and read weights-only."""
    from pretrain.consolidate import consolidated_state

    path = Path(path)
    if path.is_dir():
        saved = consolidated_state(path)
    else:
        verify_checkpoint(path)
        saved = load_weights_only(path)
    if "model_config" in saved and "state_dict" in saved:  # consolidated (bert-consolidate)
        model_cfg, state = saved["model_config"], saved["state_dict"]
        run_dir = Path(saved.get("run_dir") or Path(saved["source"]).parent.parent)
    elif "state_dict" in saved and "model" in saved.get("hyper_parameters", {}):
        model_cfg = saved["hyper_parameters"]["model"]
        state = {
            k[len(MODULE_PREFIX) :]: v
            for k, v in saved["state_dict"].items()
            if k.startswith(MODULE_PREFIX)
        }
        run_dir = path.parent.parent
    else:
        raise UserError(f"checkpoint {path} is not a bert-pretrain checkpoint (no model config)")
    cfg = _config_from_hparams(model_cfg, path)
    model = BertForPreTraining(cfg)
    _load_strict(model, state, path)
    return Pretrained(model.eval(), cfg, _tokenizer_dir_of_run(run_dir), path, run_dir)


def _load_strict(model: BertForPreTraining, state: dict, source: Path) -> None:
    state = {k: v.float() for k, v in state.items()}
    state.setdefault(TIED_KEY, state.get("bert.embeddings.word.weight"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


# ---------------------------------------------------------------- Hugging Face format


def config_from_hf(hf: dict, source: Path) -> BertConfig:
    """Our config from a Hugging Face `config.json`; refuses what this model cannot represent."""
    if hf.get("model_type") != "bert":
        raise UserError(
            f"{source}: model_type is {hf.get('model_type')!r}, only 'bert' is supported"
        )
    unsupported = {"hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, want in unsupported.items():
        if hf.get(key, want) != want:
            raise UserError(
                f"{source}: {key}={hf[key]!r} is not supported (this model uses {want!r})"
            )
    return BertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    if (hf_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(hf_dir / "model.safetensors")
    if (hf_dir / "pytorch_model.bin").is_file():
        return load_weights_only(hf_dir / "pytorch_model.bin")
    raise UserError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")


def load_hf_dir(hf_dir: Path) -> Pretrained:
    """A Hugging Face BERT directory (BertForPreTraining, BertModel or MLM-only) as our model.

    Heads absent from the directory (e.g. NSP for a masked-LM-only model) keep their fresh init;
    the encoder must be complete.
    """
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()), hf_dir / "config.json")
    weights = _read_hf_weights(hf_dir)
    if not any(k.startswith("bert.") for k in weights):  # saved from BertModel: no prefix
        weights = {f"bert.{k}": v for k, v in weights.items()}
    to_ours = {theirs: ours for ours, theirs in hf_state_dict_key_map(cfg).items()}
    state = {to_ours[k]: v for k, v in weights.items() if k in to_ours}
    model = BertForPreTraining(cfg)
    fresh = set(model.state_dict()) - set(state) - {TIED_KEY}
    encoder_missing = sorted(
        k for k in fresh if k.startswith("bert.") and not k.startswith("bert.pooler")
    )
    if encoder_missing:
        raise UserError(
            f"{hf_dir} lacks encoder weights {encoder_missing[:5]}; is it a BERT model?"
        )
    model.load_state_dict({**model.state_dict(), **{k: v.float() for k, v in state.items()}})
    if not (hf_dir / "tokenizer.json").is_file() and not (hf_dir / "vocab.txt").is_file():
        raise UserError(f"{hf_dir} has no tokenizer (tokenizer.json or vocab.txt)")
    return Pretrained(model.eval(), cfg, hf_dir, hf_dir)


def load_pretrained(path: str | Path) -> Pretrained:
    """A project checkpoint (`.ckpt` file, DeepSpeed checkpoint directory or `bert-consolidate`
    output), a run directory (its newest checkpoint) or a Hugging Face directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path} does not exist; give a .ckpt, a run directory or a Hugging Face "
            f"model directory"
        )
    if path.is_dir() and (path / "config.json").is_file():
        return load_hf_dir(path)
    if path.is_dir() and (path / "latest").is_file():  # a DeepSpeed checkpoint directory
        return load_project_checkpoint(path)
    if path.is_dir():
        return load_project_checkpoint(newest_checkpoint(path))
    return load_project_checkpoint(path)
