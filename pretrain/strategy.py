"""The one place that decides how training is distributed: config -> Lightning strategy.

`auto` runs one process (or lets Lightning pick for the devices given); `ddp` replicates the model
per process and all-reduces gradients (gloo on CPU, NCCL on GPU). DeepSpeed ZeRO plugs in here.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, Strategy

from pretrain.config import StrategyConfig


def build_strategy(cfg: StrategyConfig) -> Strategy | str:
    if cfg.name == "ddp":
        return DDPStrategy(find_unused_parameters=cfg.find_unused_parameters)
    return "auto"

