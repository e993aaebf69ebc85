"""Optimizer parameter groups and the learning-rate schedules."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pretrain.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrices: no weight decay on biases and LayerNorm weights (BERT's rule), i.e. on
    parameters with fewer than 2 dimensions. Embedding tables are matrices and decay, as in BERT."""
    decay, no_decay = [], []
    for p in model.parameters():  # tied weights appear once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


def lr_multiplier(step: int, cfg: ScheduleConfig, max_steps: int) -> float:
    """Factor on the peak learning rate after `step` optimizer steps.

    Linear warm-up from 0 to 1 over the warm-up steps, then (1 - progress)^power down to
    `min_lr_ratio` at `max_steps` (power 1 is BERT's linear decay), or flat for `constant`.
    """
    warmup = cfg.warmup(max_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    power = 1.0 if cfg.name == "linear" else cfg.power
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - progress) ** power


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int
) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, max_steps))
