"""Does the input pipeline keep up? Samples/s of one loader worker at seq 128 and 512 against
what one GPU trains, the data loader against the CPU demo's training step rate, and `bert-prep`
throughput against a plain `datasets.map` with a fast tokenizer.

    python bench/loader.py                      # all three parts (demo data under work/data)
    python bench/loader.py --part loader --batches 30 --rounds 3
    python bench/loader.py --part train         # the CPU demo: training fed by the loader
    python bench/loader.py --part prep          # rebuilds the demo data into a temporary directory

Loader part: for each prepared directory (`--data`; by default the demo data at seq 128 and 512,
`bert-prep max_seq_length=512` builds the second), samples/s of
`PretrainDataModule.train_dataloader()` (Arrow reads, padding, dynamic masking, the hand-over
from the worker processes) with `--workers` workers and nothing else consuming, divided by the
workers: the rate of one worker; and samples per CPU second of the workers (from /proc), the rate
of a worker with a core to itself, which load from other processes on a shared machine lowers far
less than the wall-clock rate. Beside them, the samples/s one H200 trains bert-base at that length
(`GPU_SAMPLES_PER_S`), and the workers per GPU the wall-clock rate needs.

Train part: samples/s of training steps (forward, backward, fused AdamW; our defaults) of the demo
model on batches already in memory, and of the same steps fed by the loader, as in training. The
loader is not the bottleneck when the two agree.

Prep part: MB of raw text per second per core. `bert-prep` with num_proc=1 (sentence split,
tokenization, document pairs, Arrow shards) against `datasets.map` of a fast tokenizer over the
same documents' text (tokenization only), both single-process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pretrain.config import OptimConfig
from pretrain.data import LoaderSettings, PretrainDataModule
from pretrain.masking import MaskingConfig
from pretrain.model import BertForPreTraining, preset, pretraining_loss
from pretrain.optim import build_optimizer

# samples/s one GPU trains, by sequence length: one H200, bert-base, bf16, `torch.compile`, the
# fastest row of docs/BENCHMARKS.md ("GPU: NVIDIA H200") at each length: 627,692 tokens/s at
# seq 128 (batch 256) and 491,820 tokens/s at seq 512 (batch 32).
GPU_SAMPLES_PER_S = {128: 627_692 / 128, 512: 491_820 / 512}


def data_module(data_dir: Path, batch: int, workers: int) -> PretrainDataModule:
    """The demo's data module over `data_dir`: default masking, seed 0, no shard verification."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    settings = LoaderSettings(batch, batch, batch, workers, seed=0)
    dm = PretrainDataModule(
        data_dir, data_dir / "tokenizer", manifest, MaskingConfig(), settings, verify=False
    )
    dm.setup("fit")
    return dm


def children_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each live child process (the loader workers), by pid: the
    nanosecond run times of its threads in /proc (`schedstat`); empty where there is no /proc."""
    out: dict[int, float] = {}
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                threads = Path(f"/proc/{pid}/task").glob("*/schedstat")
                out[int(pid)] = sum(int(t.read_text().split()[0]) for t in threads) / 1e9
            except (OSError, ValueError, IndexError):  # exited meanwhile
                continue
    return out


def loader_rate(dm: PretrainDataModule, batches: int, warmup: int = 3) -> tuple[float, float]:
    """Samples/s of the train loader alone (after `warmup` batches: worker start-up), and samples
    per CPU second of its workers (NaN without workers or /proc): what a worker gives with a core
    to itself, whatever else loads the machine."""
    it = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(it)
    n, cpu_before, start = 0, children_cpu_s(), time.perf_counter()
    for _ in range(batches):
        n += next(it)["input_ids"].size(0)
    wall = time.perf_counter() - start
    cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in children_cpu_s().items())
    return n / wall, n / cpu if cpu > 0 else math.nan


def train_rate(model, opt, batches, warmup: int = 2) -> float:
    """Samples/s of training steps over `batches` (any iterable of batch dicts)."""
    n, start = 0, None
    for i, b in enumerate(batches):
        if i == warmup:
            n, start = 0, time.perf_counter()
        out = model(
            b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"]
        )
        pretraining_loss(out, b["labels"], b["next_sentence_label"])[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += b["input_ids"].size(0)
    return n / (time.perf_counter() - start)


def bench_loader(args) -> None:
    """Samples/s of one loader worker per prepared directory, against one GPU's training rate."""
    dms = {}
    for data in args.data:
        data_dir = Path(data)
        if not (data_dir / "manifest.json").is_file():
            print(f"\nloader: {data_dir} is missing; build it with `bert-prep` (e.g. "
                  "`bert-prep max_seq_length=512` for the seq-512 demo data)")  # fmt: skip
            continue
        dms[data_dir] = data_module(data_dir, args.batch, args.workers)
    wall: dict[Path, list[float]] = {d: [] for d in dms}
    cpu: dict[Path, list[float]] = {d: [] for d in dms}
    for _ in range(args.rounds):  # interleaved: noise hits every length alike
        for data_dir, dm in dms.items():
            rate, per_cpu_s = loader_rate(dm, args.batches)
            wall[data_dir].append(rate / max(1, args.workers))
            cpu[data_dir].append(per_cpu_s)
    print(
        f"\nloader: batch {args.batch}, {args.workers} worker(s), {args.rounds} rounds × "
        f"{args.batches} batches, default masking; medians (min) of samples/s per worker (the "
        "total / workers) and of samples per worker CPU second (the rate of a worker with a core "
        "to itself)"
    )
    for data_dir in dms:
        seq = int(dms[data_dir].manifest["max_seq_length"])
        w, c = wall[data_dir], cpu[data_dir]
        print(
            f"  seq {seq:4d} ({data_dir}): {statistics.median(w):9,.0f} samples/s per worker "
            f"(min {min(w):,.0f}), {statistics.median(c):9,.0f} per worker CPU second "
            f"(min {min(c):,.0f})"
        )
        gpu = GPU_SAMPLES_PER_S.get(seq)
        if gpu is None:
            print("      no GPU figure at this length in docs/BENCHMARKS.md")
        else:
            print(
                f"      one H200 trains bert-base at {gpu:,.0f} samples/s: "
                f"{gpu / statistics.median(w):.2f} worker(s) per GPU at this rate"
            )


def bench_train(args) -> None:
    """The CPU demo: the loader alone, training on batches in memory, training fed by it."""
    data_dir = Path(args.data[0])
    dm = data_module(data_dir, args.batch, args.workers)
    vocab = int(dm.manifest["tokenizer"]["vocab_size"])
    model = BertForPreTraining(preset(args.model, vocab_size=vocab)).train()
    opt = build_optimizer(model, OptimConfig(lr=1e-4))
    it = iter(dm.train_dataloader())
    held = [next(it) for _ in range(args.batches + 2)]
    rates: dict[str, list[float]] = {"loader alone": [], "train, batches in memory": []}
    rates["train fed by the loader"] = []
    for _ in range(args.rounds):  # interleaved: noise hits all three alike
        rates["loader alone"].append(loader_rate(dm, args.batches)[0])
        rates["train, batches in memory"].append(train_rate(model, opt, held))
        fed = dm.train_dataloader()
        it = iter(fed)
        rates["train fed by the loader"].append(
            train_rate(model, opt, (next(it) for _ in range(args.batches + 2)))
        )
    print(
        f"\ntrain: {data_dir}, batch {args.batch}, {args.workers} worker(s), {args.model} fp32 "
        f"training steps, {args.rounds} rounds × {args.batches} batches"
    )
    for name, r in rates.items():
        print(f"  {name:26s} {statistics.median(r):9,.0f} samples/s (median; min {min(r):,.0f})")


def bench_prep(args) -> None:
    import datasets
    from transformers import PreTrainedTokenizerFast

    from data_prep.build import build
    from data_prep.config import PrepAppConfig, compose, to_object
    from data_prep.corpus import read_corpus

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}/out", "num_proc=1", f"tokenizer_dir={args.tokenizer}"]
        cfg = compose("prep", overrides)
        corpus = read_corpus(to_object(cfg, PrepAppConfig).corpus)
        texts = ["\n".join(d.sentences) for d in corpus.documents]
        num_bytes = corpus.num_bytes  # bert-prep's own count: the sentences' UTF-8 bytes
        start = time.perf_counter()
        build(cfg)
        prep_s = time.perf_counter() - start

        tok = PreTrainedTokenizerFast(tokenizer_file=f"{args.tokenizer}/tokenizer.json")
        ds = datasets.Dataset.from_dict({"text": texts})
        datasets.disable_progress_bars()
        start = time.perf_counter()
        ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
        map_s = time.perf_counter() - start
    print(f"\nprep: demo corpus, {num_bytes / 1e6:.1f} MB of text, {len(texts)} documents, 1 core")
    print(f"  bert-prep (split, tokenize, pair, write) {num_bytes / 1e6 / prep_s:6.2f} MB/s/core")
    print(f"  datasets.map + fast tokenizer (tokenize) {num_bytes / 1e6 / map_s:6.2f} MB/s/core")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=["loader", "train", "prep", "all"], default="all")
    p.add_argument(
        "--data",
        nargs="+",
        default=["work/data/demo-seq128", "work/data/demo-seq512"],
        help="prepared directories (the train part uses the first)",
    )
    p.add_argument("--tokenizer", default="work/tokenizers/demo")
    p.add_argument("--model", default="bert-tiny", help="the demo model")
    p.add_argument("--batch", type=int, default=64, help="the demo micro-batch")
    p.add_argument("--workers", type=int, default=1, help="the demo's data.num_workers")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.part in ("loader", "all"):
        bench_loader(args)
    if args.part in ("train", "all"):
        bench_train(args)
    if args.part in ("prep", "all"):
        bench_prep(args)


if __name__ == "__main__":
    main()
