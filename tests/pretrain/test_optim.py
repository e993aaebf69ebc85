"""Learning-rate schedules and weight-decay groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pretrain.config import OptimConfig, PretrainConfig, ScheduleConfig, StrategyConfig
from pretrain.model import BertForPreTraining, preset
from pretrain.optim import (
    Lamb,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    parameter_groups,
)


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


def test_adamw_implementations_take_the_same_steps():
    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=50, hidden_dropout=0.0, attention_dropout=0.0)
    reference = BertForPreTraining(cfg)
    ids = torch.randint(1, 50, (2, 8))
    results = {}
    for implementation in ("for_loop", "foreach", "fused", "auto"):
        model = BertForPreTraining(cfg)
        model.load_state_dict(reference.state_dict())
        opt = build_optimizer(model, OptimConfig(lr=1e-2, implementation=implementation))
        for _ in range(3):
            model.mlm(model.bert(ids)[0]).logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad()
        results[implementation] = model.state_dict()
    for implementation in ("foreach", "fused", "auto"):
        for name, p in results["for_loop"].items():
            torch.testing.assert_close(results[implementation][name], p, msg=name)


def test_lamb_step_matches_a_hand_computed_one():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # decays: trust ratio applies
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))  # no decay: a plain Adam step
    lr, wd, eps = 0.1, 0.01, 1e-6
    opt = Lamb([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr)
    w.grad, b.grad = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.25])
    opt.step()
    # Step 1: bias-corrected moments are g and g², so the Adam direction is g / (|g| + eps).
    u = [g / (abs(g) + eps) + wd * x for g, x in zip([1.0, 2.0], [3.0, 4.0], strict=True)]
    trust = 5.0 / math.hypot(*u)  # ‖w‖ = 5
    expected_w = [x - lr * trust * ui for x, ui in zip([3.0, 4.0], u, strict=True)]
    expected_b = [1.0 - lr * 0.5 / (0.5 + eps), -1.0 + lr * 0.25 / (0.25 + eps)]
    torch.testing.assert_close(w.detach(), torch.tensor(expected_w))
    torch.testing.assert_close(b.detach(), torch.tensor(expected_b))
    # Step 2 from the optimizer's own state: m = 0.9·m1 + 0.1·g, v likewise, with bias correction.
    w.grad = torch.tensor([-1.0, 1.0])
    w1 = w.detach().clone()
    opt.step()
    g1, g2 = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 1.0])
    m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9**2)
    v = (0.999 * 0.001 * g1**2 + 0.001 * g2**2) / (1 - 0.999**2)
    u2 = m / (v.sqrt() + eps) + wd * w1
    torch.testing.assert_close(w.detach(), w1 - lr * (w1.norm() / u2.norm()) * u2)


def test_lamb_trains_a_small_regression_to_a_low_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = x @ torch.randn(16, 1) + 0.5
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = build_optimizer(model, OptimConfig(name="lamb", lr=1e-2, weight_decay=0.0))
    assert isinstance(opt, Lamb)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.02 * first


def test_lamb_and_unknown_optimizer_settings_are_checked():
    with pytest.raises(ValueError, match=r"optim\.name"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match=r"optim\.implementation"):
        OptimConfig(implementation="apex")
    with pytest.raises(ValueError, match="optim=lamb does not work with strategy deepspeed"):
        PretrainConfig(optim=OptimConfig(name="lamb"), strategy=StrategyConfig(name="deepspeed"))


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_adamw_gives_way_to_foreach_under_fp16_loss_scaling_with_clipping(scaled):
    # Lightning cannot clip gradients that a fused optimizer unscales inside its own step.
    import lightning as L
    from lightning.pytorch.plugins import MixedPrecision

    from pretrain.module import BertPretrainingModule

    module = BertPretrainingModule(
        preset("bert-tiny", vocab_size=50), OptimConfig(), ScheduleConfig(), max_steps=10
    )
    # fp16 with a GradScaler, as "16-mixed" is on GPUs (on the CPU Lightning turns it into bf16).
    plugins = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))] if scaled else []
    module.trainer = L.Trainer(
        accelerator="cpu", plugins=plugins, gradient_clip_val=1.0, logger=False
    )
    fused = not scaled
    opt = module.configure_optimizers()["optimizer"]
    assert bool(opt.defaults["fused"]) is fused
    assert bool(opt.defaults["foreach"]) is not fused
