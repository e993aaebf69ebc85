"""The encoder and tokenizer a fine-tuning run starts from: loaded from a checkpoint, run directory
or Hugging Face directory, with the run's dropout, random-init and pooler-reset choices applied."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pretrain.errors import UserError
from pretrain.finetune.config import FinetuneConfig
from pretrain.finetune.hf_import import check_finetuned_source
from pretrain.model import BertConfig, BertForPreTraining, BertModel


def build_encoder(cfg: FinetuneConfig) -> tuple[BertModel, BertConfig, Path, str]:
    """The encoder to fine-tune, its config, the tokenizer directory, and what was loaded."""
    from pretrain.weights import load_pretrained

    if not Path(cfg.model_path).exists():
        raise UserError(
            f"model={cfg.model_path!r} does not exist; give a checkpoint (.ckpt), a run directory "
            "(e.g. work/runs/demo after `make demo`) or an exported Hugging Face directory"
        )
    if cfg.init == "finetuned":  # before loading: a source with no head to continue from
        check_finetuned_source(cfg.model_path)
    pretrained = load_pretrained(cfg.model_path)
    model, config = pretrained.model, pretrained.config
    dropout = {
        name: getattr(cfg, name)
        for name in ("hidden_dropout", "attention_dropout")
        if getattr(cfg, name) is not None
    }
    if dropout:
        config = replace(config, **dropout)
    if cfg.init == "random":
        torch.manual_seed(cfg.seed)
        model = BertForPreTraining(config)
    elif dropout:  # dropout rates are fixed at construction: rebuild, then take the weights
        rebuilt = BertForPreTraining(config)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    if cfg.reinit_pooler and cfg.init != "random":
        generator = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():  # BERT's init: N(0, initializer_range) weight, zero bias
            weight = model.bert.pooler.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * config.initializer_range)
            model.bert.pooler.bias.zero_()
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else Path(pretrained.tokenizer_dir)
    model.bert.train()  # a loaded model may come in eval mode; Lightning keeps submodules' modes
    return (
        model.bert,
        config,
        tokenizer_dir,
        str(getattr(pretrained, "source", cfg.model_path)),
    )


def load_tokenizer(tokenizer_dir: Path, config: BertConfig):
    """`tokenizer_dir`/tokenizer.json, refused unless its vocabulary is the model's."""
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} is missing; set tokenizer_dir= to the model's tokenizer directory")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UserError(
            f"the tokenizer {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens but the model's "
            f"vocabulary has {config.vocab_size}; use the tokenizer the model was pretrained with "
            "(tokenizer_dir=)"
        )
    return tokenizer
