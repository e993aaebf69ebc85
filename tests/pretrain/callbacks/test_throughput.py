"""ThroughputMonitor: tokens/s, model FLOP/s and MFU in the training logs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from pretrain.callbacks.throughput import ThroughputMonitor, detect_peak_tflops, resolve_peak_tflops
from pretrain.config import OptimConfig, ScheduleConfig
from pretrain.model import flops_per_token, preset
from pretrain.module import BertPretrainingModule


def _batch(B: int = 4, T: int = 16, V: int = 60) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.long)
    attention[0, 10:] = 0  # padding: 58 real tokens
    labels = torch.full((B, T), -100)
    labels[:, 2:5] = ids[:, 2:5]  # 12 masked positions
    return dict(
        input_ids=ids * attention,
        token_type_ids=torch.zeros_like(ids),
        attention_mask=attention,
        labels=labels,
        next_sentence_label=torch.tensor([0, 1, 0, 1]),
    )


def _fit(monitor: ThroughputMonitor, model_cfg) -> dict:
    module = BertPretrainingModule(
        model_cfg, OptimConfig(), ScheduleConfig(name="constant", warmup_steps=0), max_steps=4
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        precision="32",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=2,
        callbacks=[monitor],
    )
    trainer.fit(module, DataLoader([_batch()] * 4, batch_size=None))
    return {k: float(v) for k, v in trainer.logged_metrics.items()}


def test_throughput_monitor_logs_model_flops_and_mfu_against_the_configured_peak():
    cfg = preset("bert-tiny", vocab_size=60, max_position_embeddings=32)
    peak = 1e-4  # TFLOP/s: any positive value; MFU is relative to it
    logged = _fit(ThroughputMonitor(2, 1, False, model_cfg=cfg, peak_tflops=peak), cfg)
    # Every batch has T = 16, 58 real tokens and 12 masked ones.
    expected_tflops = logged["train/tokens_per_sec"] * flops_per_token(cfg, 16, 12 / 58) / 1e12
    assert logged["train/model_tflops_per_sec"] == pytest.approx(expected_tflops, rel=1e-5)
    assert logged["train/mfu"] == pytest.approx(expected_tflops / peak, rel=1e-5)
    assert logged["train/tokens_seen"] == 4 * 58  # two intervals of two batches


def test_throughput_monitor_logs_no_mfu_without_a_peak():
    cfg = preset("bert-tiny", vocab_size=60, max_position_embeddings=32)
    logged = _fit(ThroughputMonitor(2, 1, False, model_cfg=cfg, peak_tflops=None), cfg)
    assert logged["train/model_tflops_per_sec"] > 0
    assert "train/mfu" not in logged


def test_known_gpu_peaks_and_cpu_default():
    assert detect_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert detect_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert detect_peak_tflops("NVIDIA H200") == 989.0
    assert detect_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert detect_peak_tflops("NVIDIA GeForce RTX 4090") is None
    assert resolve_peak_tflops(None, "cpu") is None  # CPUs: only a configured peak
    assert resolve_peak_tflops(2.5, "cpu") == 2.5


def test_excluded_time_is_left_out_of_the_throughput_window():
    monitor = ThroughputMonitor(2, 1, False)
    monitor.exclude(5.0)  # before training starts: nothing to move
    assert monitor._t0 is None
    monitor._t0 = monitor._start_time = 100.0
    monitor.exclude(5.0)
    assert (monitor._t0, monitor._start_time) == (105.0, 105.0)
