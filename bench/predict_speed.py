"""Prediction speed of `bert-predict` against transformers' text-classification pipeline, on the
same fine-tuned model.

`--run` is a `bert-finetune` sequence-classification run; the pipeline loads its `bert-export`
directory (`--export`, or one written into a temporary directory here), so both hold the same
weights. Both get the same texts (the run's own test split, cycled to `--texts`), batch size and
truncation (the run's `task.max_seq_length`), in one process with the same torch threads, and
each round times every peer once on all the texts, in a rotating order, after a warm-up pass, so
machine noise hits them alike. Timed: texts in, labels and probabilities out, tokenization
included:

- `ours-fp32`: bert-predict's path (`pretrain/finetune/predict.py`: length-sorted batches padded
  to their longest text, the fine-tuned module, softmax);
- `ours-int8`: the same after `quantize=int8` (`quantize_int8`: dynamic int8 Linear layers);
- `hf`: `pipeline("text-classification", model=EXPORT, top_k=None)` called with `batch_size`,
  `truncation=True` and `max_length`.

Prints each peer's median texts/s, the median of its per-round ratios to `hf`, and the agreement
of its labels with `ours-fp32` and with the test split's gold labels (accuracy).

    python bench/predict_speed.py --run work/finetune/rotten_tomatoes-pretrained-s1234
    make bench-predict
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.finetune.data import SEQUENCE
from pretrain.finetune.finetuned import load_finetuned, read_run_config
from pretrain.finetune.predict import encode_texts, quantize_int8, run_batches, softmax
from pretrain.finetune.task_data import load_task_data


def test_texts(run: Path, n: int) -> tuple[list[str], list[str]]:
    """The run's test split (texts and gold labels), cycled or cut to `n`."""
    cfg = read_run_config(run)
    if cfg.task.type != SEQUENCE or cfg.task.text_pair_column:
        sys.exit(
            f"{run} is a {cfg.task.type} run"
            + (" with sentence pairs" if cfg.task.text_pair_column else "")
            + "; this benchmark compares single-text sequence classification"
        )
    records = load_task_data(cfg.task).records["test"]
    chosen = list(itertools.islice(itertools.cycle(records), n))
    return [r["text"] for r in chosen], [r["label"] for r in chosen]


def ours(module, tokenizer, labels: list[str], max_length: int, batch: int):
    """bert-predict's in-process path for `texts`: (labels, probabilities (texts, labels))."""
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    device = torch.device("cpu")

    def predict(texts: list[str]) -> tuple[list[str], np.ndarray]:
        encodings, _ = encode_texts(tokenizer, texts, None, max_length)
        logits = run_batches(module, encodings, batch, pad_id, device)
        probs = np.stack([softmax(x.astype(np.float64)) for x in logits])
        return [labels[i] for i in probs.argmax(-1)], probs

    return predict


def hf(export: Path, labels: list[str], max_length: int, batch: int):
    """transformers' pipeline on the export: (labels, probabilities (texts, labels))."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(export), device="cpu", top_k=None)

    def predict(texts: list[str]) -> tuple[list[str], np.ndarray]:
        out = pipe(texts, batch_size=batch, truncation=True, max_length=max_length)
        probs = np.array(
            [[{d["label"]: d["score"] for d in row}[x] for x in labels] for row in out]
        )
        return [labels[i] for i in probs.argmax(-1)], probs

    return predict


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, required=True, help="a bert-finetune sequence run")
    p.add_argument("--export", type=Path, help="its bert-export directory (default: written here)")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts, gold = test_texts(args.run, args.texts)
    run = load_finetuned(args.run)
    module = run.module.eval()
    int8 = copy.deepcopy(module)
    int8_layers = quantize_int8(int8)
    with tempfile.TemporaryDirectory() as tmp:
        export = args.export
        if export is None:
            from pretrain.export import export_finetuned

            export = export_finetuned(args.run, Path(tmp) / "export")
        peers = {
            "ours-fp32": ours(module, run.tokenizer, run.labels, run.max_length, args.batch),
            "ours-int8": ours(int8, run.tokenizer, run.labels, run.max_length, args.batch),
            "hf": hf(export, run.labels, run.max_length, args.batch),
        }
        predictions = {name: peer(texts) for name, peer in peers.items()}  # also the warm-up
        rates: dict[str, list[float]] = {name: [] for name in peers}
        names = list(peers)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotating order
                started = time.perf_counter()
                peers[name](texts)
                rates[name].append(len(texts) / (time.perf_counter() - started))
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, int8 engine {torch.backends.quantized.engine}"
    )
    print(
        f"{args.run} ({run.config.num_layers} layers, hidden {run.config.hidden_size}, "
        f"{len(run.labels)} labels, {int8_layers} Linear layers in int8): {len(texts)} test texts, "
        f"batch {args.batch}, max {run.max_length} pieces, {args.rounds} rounds after a warm-up"
    )
    reference = predictions["ours-fp32"][0]
    print(
        f"  {'peer':10s} {'texts/s':>9s}  {'ratio to hf':>22s}  {'agrees w/ fp32':>14s}  accuracy"
    )
    for name, r in rates.items():
        ratios = [o / h for o, h in zip(r, rates["hf"], strict=True)]
        ratio = (
            f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}-{max(ratios):.2f})"
            if name != "hf"
            else ""
        )
        pred = predictions[name][0]
        agree = np.mean([a == b for a, b in zip(pred, reference, strict=True)])
        accuracy = np.mean([a == b for a, b in zip(pred, gold, strict=True)])
        print(
            f"  {name:10s} {statistics.median(r):9.1f}  {ratio:>22s}  {agree:14.2%}  {accuracy:.4f}"
        )
    gap = np.abs(predictions["ours-fp32"][1] - predictions["hf"][1]).max()
    print(f"  largest probability difference ours-fp32 vs hf: {gap:.2e}")


if __name__ == "__main__":
    main()
