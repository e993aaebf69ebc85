"""Training throughput of our BERT against `transformers.BertForPreTraining`, side by side.

All peers get the same architecture, batch, sequence length, masked positions (same random batch)
and precision, and train (forward, backward, AdamW step) in interleaved rounds in one process after
warm-up, so machine noise hits them alike. Prints tokens/s per peer (median over rounds), the
median of the per-round ratios to Hugging Face, the model FLOPs per token and the MFU against a
matmul peak measured in the same run.

Peers: `ours` (the defaults: sparse MLM head, fused QKV, fused AdamW), `ours-compile` (plus
`torch.compile`), ablations `ours-dense` (MLM head at every position), `ours-unfused-qkv`,
`ours-loop-adamw` (torch's for-loop AdamW) and `hf` (`attn_implementation="sdpa"`, torch's fused
AdamW, the default optimizer of the `transformers` Trainer).

    python bench/throughput.py --models bert-mini --precisions fp32 --rounds 3 --steps 2
    python bench/throughput.py --device cuda --models bert-base --seqs 128 512 --precisions bf16
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from pretrain.config import OptimConfig
from pretrain.model import (
    BertForPreTraining,
    flops_per_token,
    hf_config_kwargs,
    preset,
    pretraining_loss,
)
from pretrain.optim import build_optimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEERS = ("ours", "ours-compile", "ours-dense", "ours-unfused-qkv", "ours-loop-adamw", "hf")


def make_batch(batch: int, seq: int, vocab: int, mask_rate: float, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, seq, generator=g) < mask_rate
    labels[chosen] = ids[chosen]
    b = dict(
        input_ids=ids,
        token_type_ids=torch.zeros_like(ids),
        attention_mask=torch.ones_like(ids),
        labels=labels,
        next_sentence_label=torch.randint(0, 2, (batch,), generator=g),
    )
    return {k: v.to(device) for k, v in b.items()}


def ours_step(model, b):
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"])
    return pretraining_loss(out, b["labels"], b["next_sentence_label"])[0]


def hf_step(model, b):
    return model(
        input_ids=b["input_ids"],
        token_type_ids=b["token_type_ids"],
        attention_mask=b["attention_mask"],
        labels=b["labels"],
        next_sentence_label=b["next_sentence_label"],
    ).loss


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(peer, batch, steps: int, precision: str, device: str) -> float:
    """Seconds per training step, averaged over `steps`."""
    step_fn, model, opt = peer
    amp = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with amp:
            loss = step_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - start) / steps


def matmul_peak_tflops(precision: str, device: str, seconds: float = 1.0) -> float:
    """Best TFLOP/s of a square matmul in `precision`, timed here (the roofline for MFU)."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    a @ b  # warm-up (kernel selection, page faults)
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e12)
        if time.perf_counter() > deadline:
            return best


def build_peer(name: str, cfg_kwargs: dict, device: str, lr: float = 1e-4):
    if name == "hf":
        import transformers

        hf_cfg = transformers.BertConfig(
            **hf_config_kwargs(preset(**cfg_kwargs)), attn_implementation="sdpa"
        )
        model = transformers.BertForPreTraining(hf_cfg).to(device).train()
        fused = device in ("cpu", "cuda")
        return hf_step, model, torch.optim.AdamW(model.parameters(), lr=lr, fused=fused)
    overrides = {
        "ours-dense": dict(sparse_mlm=False),
        "ours-unfused-qkv": dict(fused_qkv=False),
    }.get(name, {})
    model = BertForPreTraining(preset(**cfg_kwargs, **overrides)).to(device).train()
    if name == "ours-compile":
        model.compile_blocks()
    implementation = "for_loop" if name == "ours-loop-adamw" else "fused"
    opt = build_optimizer(model, OptimConfig(lr=lr, implementation=implementation))
    return ours_step, model, opt


def bench_one(args, model_name: str, seq: int, precision: str, peak: float) -> None:
    torch.manual_seed(0)
    cfg_kwargs = dict(name=model_name, vocab_size=args.vocab, max_position_embeddings=max(512, seq))
    peers = {name: build_peer(name, cfg_kwargs, args.device) for name in args.peers}
    batch = make_batch(args.batch, seq, args.vocab, args.mask_rate, args.device)
    tokens = args.batch * seq
    for peer in peers.values():  # warm-up: allocator, kernel selection, compilation
        timed_steps(peer, batch, args.warmup, precision, args.device)
    rates: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(args.rounds):
        for name, peer in peers.items():
            rates[name].append(
                tokens / timed_steps(peer, batch, args.steps, precision, args.device)
            )
        # The peak is re-measured every round and the best kept: on a shared machine a single
        # measurement may land in a busy moment and flatter the MFU.
        peak = max(peak, matmul_peak_tflops(precision, args.device, seconds=0.3))
    # Model FLOPs: the work BERT training needs (MLM head at the masked positions only), the same
    # figure for every peer, so MFU compares useful work per second.
    fpt = flops_per_token(preset(**cfg_kwargs), seq, args.mask_rate)
    print(
        f"\n{model_name} seq {seq} batch {args.batch} {precision} on {args.device}, vocab "
        f"{args.vocab}, masking {args.mask_rate:.0%}, {args.rounds} rounds × {args.steps} steps "
        f"after {args.warmup} warm-up steps; model FLOPs/token {fpt / 1e6:.1f} M; "
        f"{precision} matmul peak {peak:.3g} TFLOP/s (best measured in this run)"
    )
    for name, r in rates.items():
        med = statistics.median(r)
        line = f"  {name:17s} {med:10,.0f} tokens/s  MFU {med * fpt / (peak * 1e12):6.1%}"
        if "hf" in rates and name != "hf":
            ratios = [o / h for o, h in zip(r, rates["hf"], strict=True)]
            line += (
                f"  ratio to hf {statistics.median(ratios):.2f}× "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
            )
        print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["bert-mini", "bert-small"])
    p.add_argument("--seqs", nargs="+", type=int, default=[128])
    p.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--peers", nargs="+", choices=PEERS, default=["ours", "hf"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--vocab", type=int, default=30522, help="BERT's uncased vocabulary by default")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per peer per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per peer first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for both peers
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {device_name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for precision in args.precisions:
        peak = matmul_peak_tflops(precision, args.device)
        for model_name in args.models:
            for seq in args.seqs:
                bench_one(args, model_name, seq, precision, peak)


if __name__ == "__main__":
    main()
