"""Does the input pipeline keep up? Data loader + collator alone against the training step rate,
and `bert-prep` throughput against a plain `datasets.map` with a fast tokenizer.

    python bench/loader.py                      # both parts, the demo config (work/data/demo-seq128)
    python bench/loader.py --part loader --batches 50
    python bench/loader.py --part prep          # rebuilds the demo data into a temporary directory

Loader part: samples/s of `PretrainDataModule.train_dataloader()` (pair reading, dynamic masking,
padding) with the configured workers and nothing else running; samples/s of training steps
(forward, backward, fused AdamW; our defaults) of the demo model on batches already in memory; and
of the same steps fed by the loader, as in training. The loader is not the bottleneck when the
last two agree (and the first exceeds them).

Prep part: MB of raw text per second per core. `bert-prep` with num_proc=1 (sentence split,
tokenization, document pairs, Arrow shards) against `datasets.map` of a fast tokenizer over the
same documents' text (tokenization only), both single-process.
"""

from __future__ import annotations

import argparse
import datetime
import json
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


def loader_rate(dm: PretrainDataModule, batches: int, warmup: int = 3) -> float:
    """Samples/s of the train loader alone (after `warmup` batches: worker start-up)."""
    it = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)["input_ids"].size(0)
    return n / (time.perf_counter() - start)


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
    data_dir = Path(args.data)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    settings = LoaderSettings(args.batch, args.batch, args.batch, args.workers, seed=0)
    dm = PretrainDataModule(data_dir, data_dir / "tokenizer", manifest, MaskingConfig(), settings)
    dm.setup("fit")
    vocab = int(manifest["tokenizer"]["vocab_size"])
    model = BertForPreTraining(preset(args.model, vocab_size=vocab)).train()
    opt = build_optimizer(model, OptimConfig(lr=1e-4))
    it = iter(dm.train_dataloader())
    held = [next(it) for _ in range(args.batches + 2)]
    rates: dict[str, list[float]] = {"loader alone": [], "train, batches in memory": []}
    rates["train fed by the loader"] = []
    for _ in range(args.rounds):  # interleaved: noise hits all three alike
        rates["loader alone"].append(loader_rate(dm, args.batches))
        rates["train, batches in memory"].append(train_rate(model, opt, held))
        fed = dm.train_dataloader()
        it = iter(fed)
        rates["train fed by the loader"].append(
            train_rate(model, opt, (next(it) for _ in range(args.batches + 2)))
        )
    print(
        f"\nloader: {data_dir}, batch {args.batch}, {args.workers} worker(s), {args.model} fp32 "
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
    p.add_argument("--part", choices=["loader", "prep", "both"], default="both")
    p.add_argument("--data", default="work/data/demo-seq128")
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
    if args.part in ("loader", "both"):
        bench_loader(args)
    if args.part in ("prep", "both"):
        bench_prep(args)


if __name__ == "__main__":
    main()
