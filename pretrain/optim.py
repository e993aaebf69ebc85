"""Optimizers (AdamW, LAMB), their parameter groups, and the learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable

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


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning") as in NVIDIA's BERT
    recipe (apex `FusedLAMB` with its defaults): Adam moments with bias correction, decoupled
    weight decay added to the update, and a per-tensor trust ratio ‖w‖ / ‖update‖ (1 where either
    norm is 0) scaling the step of every tensor that decays. Tensors without weight decay (biases,
    LayerNorm) take plain Adam steps unless `adapt_without_decay` (apex's `use_nvlamb`).

    Global gradient-norm clipping, which apex folds into the step, is the trainer's
    `gradient_clip_val` here. The trust ratio needs whole tensors: not for ZeRO-partitioned
    parameters (rejected in `pretrain/config.py`).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        adapt_without_decay: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            adapt_without_decay=adapt_without_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)  # m = β1·m + (1 − β1)·g
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if wd != 0:
                    update.add_(p, alpha=wd)
                if wd != 0 or group["adapt_without_decay"]:
                    # A 0-dim tensor, not a Python float: no device sync per parameter.
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])
        return loss


def adamw_kwargs(implementation: str) -> dict:
    """torch AdamW's keyword for `optim.implementation`: `fused` (one kernel for all parameters;
    CPU and CUDA), `foreach` (batched over parameters), `for_loop`, or `auto` (torch's default:
    foreach on CUDA, for_loop on CPU)."""
    return {
        "auto": {},
        "fused": {"fused": True},
        "foreach": {"foreach": True, "fused": False},
        "for_loop": {"foreach": False, "fused": False},
    }[implementation]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **adamw_kwargs(cfg.implementation)
    )


def repair_loaded_optimizer(optimizer: torch.optim.Optimizer, weight_decays: list[float]) -> None:
    """Undo two things DeepSpeed's ZeRO-3 universal-checkpoint loader (elastic resume,
    pretrain/elastic.py) gets wrong when the model has several parameter groups; a no-op for any
    other optimizer state.

    - It gives every group the hyperparameters of the first one, which would decay biases and
      LayerNorm weights: each group gets its own weight decay back.
    - It stores one `step` tensor object in the state of every group's flat fp32 partition. torch's
      AdamW increments steps in place, so a shared tensor advanced once per group per optimizer
      step, and the bias correction of every step after the resume was wrong (the losses drifted
      by ~2e-4 relative within 4 steps on bert-tiny): each state gets its own copy.
    """
    groups = optimizer.param_groups
    if len(groups) == len(weight_decays):
        for group, decay in zip(groups, weight_decays, strict=True):
            group["weight_decay"] = decay
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the torch optimizer
    seen: set[int] = set()
    for state in inner.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(step))


def lr_multiplier(
    step: int, cfg: ScheduleConfig, max_steps: int, time_fraction: float | None = None
) -> float:
    """Factor on the peak learning rate after `step` optimizer steps.

    Linear warm-up from 0 to 1 over the warm-up steps, then (1 - progress)^power down to
    `min_lr_ratio` at `max_steps` (power 1 is BERT's linear decay), or flat for `constant`.

    With a wall-clock budget, `time_fraction` is the share of it spent (`pretrain/callbacks/budget.py`):
    progress is then whichever is further, steps or time, so the schedule ends with the budget.
    Warm-up given as a fraction is then a fraction of the budget too.
    """
    if time_fraction is None or cfg.warmup_steps is not None:
        warmup = cfg.warmup(max_steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        if time_fraction is not None:
            progress = max(progress, time_fraction)
    else:
        run = max((step + 1) / max_steps, time_fraction)
        if run < cfg.warmup_fraction:
            return run / cfg.warmup_fraction
        progress = (run - cfg.warmup_fraction) / (1.0 - cfg.warmup_fraction)
    if cfg.name == "constant":
        return 1.0
    power = 1.0 if cfg.name == "linear" else cfg.power
    progress = min(1.0, progress)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - progress) ** power


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    max_steps: int,
    time_fraction: Callable[[], float] | None = None,
) -> LambdaLR:
    """`time_fraction`: the share of a wall-clock budget spent so far (None: no budget)."""
    return LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, cfg, max_steps, time_fraction() if time_fraction is not None else None
        ),
    )
