"""Learning-rate schedules and weight-decay groups."""

from __future__ import annotations

import itertools

import pytest
import torch

from pretrain.config import OptimConfig, ScheduleConfig
from pretrain.model import BertForPreTraining, preset
from pretrain.optim import build_optimizer, build_scheduler, lr_multiplier, parameter_groups


def test_linear_warmup_then_linear_decay_to_zero():
    cfg = ScheduleConfig(name="linear", warmup_steps=10)
    values = [lr_multiplier(s, cfg, 110) for s in range(111)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)  # peak at the end of warm-up
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.5)
    assert values[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_polynomial_decay_and_floor():
    cfg = ScheduleConfig(name="polynomial", warmup_steps=0, power=0.5, min_lr_ratio=0.1)
    assert lr_multiplier(0, cfg, 100) == pytest.approx(1.0)
    assert lr_multiplier(75, cfg, 100) == pytest.approx(0.1 + 0.9 * 0.25**0.5)
    assert lr_multiplier(100, cfg, 100) == pytest.approx(0.1)


def test_constant_and_warmup_fraction():
    cfg = ScheduleConfig(name="constant", warmup_fraction=0.1)
    assert cfg.warmup(200) == 20
    assert lr_multiplier(500, cfg, 200) == 1.0


def test_scheduler_steps_the_optimizer_learning_rate():
    model = BertForPreTraining(preset("bert-tiny", vocab_size=50))
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4), max_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_no_weight_decay_on_biases_and_layernorm():
    model = BertForPreTraining(preset("bert-tiny", vocab_size=50))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "bert.layers.0.attention_norm.weight" in no_decay_names
    assert "bert.layers.0.ffn_in.bias" in no_decay_names
    assert not any(n.endswith("ffn_in.weight") for n in no_decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert isinstance(build_optimizer(model, OptimConfig()), torch.optim.AdamW)
