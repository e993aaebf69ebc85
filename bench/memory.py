"""Peak memory per rank under DeepSpeed ZeRO-0/1/2/3 and ZeRO-3 with offload, 2 ranks, on the CPU.

Each configuration is one `torchrun --nproc_per_node 2` launch of this file in worker mode: it
trains `BertPretrainingModule` (the framework's module, optimizer and schedule) for a few steps on
synthetic batches through `pretrain.strategy.build_strategy`, then every rank reports its
resident-set high-water mark (`ru_maxrss`), its RSS before the model was built, and its RSS after
training (steady state: what the parameters, gradients and optimizer state keep resident). On a GPU the
same numbers would come from `torch.cuda.max_memory_allocated`; on the CPU, RSS is what ZeRO
shrinks (parameters, gradients and AdamW state all live in host memory).

    python bench/memory.py --model bert-small --steps 3 --precision 32

Prints a Markdown table: peak RSS per rank, the part above the pre-model baseline, and the
reduction of that part against ZeRO-0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
from pathlib import Path

CONFIGS = {  # label: strategy group option
    "ZeRO-0": "zero0",
    "ZeRO-1": "deepspeed_zero1",
    "ZeRO-2": "deepspeed_zero2",
    "ZeRO-3": "deepspeed_zero3",
    "ZeRO-3 + offload": "deepspeed_zero3_offload",
}
REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration (run under torchrun)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pretrain.config import OptimConfig, ScheduleConfig, StrategyConfig
    from pretrain.model import preset
    from pretrain.module import BertPretrainingModule
    from pretrain.strategy import build_strategy

    class Synthetic(Dataset):
        def __len__(self) -> int:
            return 10**6

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(5, args.vocab, (args.seq,), generator=g)
            labels = torch.full_like(ids, -100)
            chosen = torch.rand(args.seq, generator=g) < 0.15
            labels[chosen] = ids[chosen]
            return dict(
                input_ids=ids,
                token_type_ids=torch.zeros_like(ids),
                attention_mask=torch.ones_like(ids),
                labels=labels,
                next_sentence_label=torch.tensor(i % 2),
            )

    if args.strategy == "zero0":
        strategy_cfg = StrategyConfig(name="deepspeed", zero_stage=0)
    else:
        stage = 3 if "zero3" in args.strategy else int(args.strategy[-1])
        offload = args.strategy.endswith("offload")
        strategy_cfg = StrategyConfig(
            name="deepspeed",
            zero_stage=stage,
            offload_optimizer=offload,
            offload_parameters=offload,
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy=build_strategy(strategy_cfg, "cpu"),
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=True,
        gradient_clip_val=1.0,
    )
    baseline = rss_mib()
    module = BertPretrainingModule(
        preset(args.model, vocab_size=args.vocab, max_position_embeddings=max(512, args.seq)),
        OptimConfig(),
        ScheduleConfig(name="constant"),
        args.steps,
    )
    trainer.fit(module, DataLoader(Synthetic(), batch_size=args.micro_batch))
    mine = torch.tensor([baseline, peak_rss_mib(), rss_mib()], dtype=torch.float64)
    gathered = trainer.strategy.all_gather(mine)
    if trainer.is_global_zero:
        rows = gathered.reshape(-1, 3).tolist()
        Path(args.out).write_text(
            json.dumps([{"baseline": b, "peak": p, "end": e} for b, p, e in rows])
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver(args: argparse.Namespace) -> None:
    results = {}
    for label, strategy in CONFIGS.items():
        out = Path(f"/tmp/bench_memory_{os.getpid()}_{strategy}.json")
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
            "--strategy", strategy, "--out", str(out), "--model", args.model,
            "--steps", str(args.steps), "--precision", args.precision, "--seq", str(args.seq),
            "--micro-batch", str(args.micro_batch), "--vocab", str(args.vocab),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[label] = json.loads(out.read_text())
        out.unlink()
        print(f"{label}: done", file=sys.stderr, flush=True)
    print_table(results, args)


def print_table(results: dict, args: argparse.Namespace) -> None:
    print(
        f"{args.model}, {args.ranks} ranks, {args.precision}, micro-batch {args.micro_batch} × "
        f"seq {args.seq}, vocab {args.vocab}, {args.steps} steps; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch-cpu, {datetime.date.today().isoformat()}"
    )
    print()
    print(
        "| config | peak RSS / rank (MiB) | peak above baseline | reduction vs ZeRO-0 "
        "| RSS after training, above baseline | reduction vs ZeRO-0 |"
    )
    print("|---|---|---|---|---|---|")
    base_peak = base_end = None
    for label, ranks in results.items():
        peak = max(r["peak"] for r in ranks)
        above = max(r["peak"] - r["baseline"] for r in ranks)
        end = max(r["end"] - r["baseline"] for r in ranks)
        if label == "ZeRO-0":
            base_peak, base_end = above, end
        print(
            f"| {label} | {peak:,.0f} | {above:,.0f} | {_reduction(above, base_peak)} "
            f"| {end:,.0f} | {_reduction(end, base_end)} |"
        )


def _reduction(value: float, base: float | None) -> str:
    return f"{1 - value / base:.0%}" if base else "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="bert-small")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
