"""Does pretraining help? Fine-tune a pretrained model and the same architecture from random
initialization, with identical settings and seeds, on each row; print the scores side by side.

    python -m pretrain.finetune.compare --model work/runs/demo          # = make finetune-demo

Each (row, init, seed) is one `bert-finetune` run (composed from `conf/finetune.yaml` with the
row's task and overrides below, run in this process) in
`<work>/finetune/<out-name>/<row>-<init>-s<seed>` (out-name: `compare` unless given); the table
reports the test metric of the best dev epoch, mean ± standard deviation over the seeds, and is
saved as `summary.json` beside the runs. A run whose test predictions are degenerate (one label for
almost every example, or almost no entities: `pretrain/finetune/degenerate.py`) is marked `*` in
the table, with a footnote; it stays in the mean, as it scored. A run whose directory already holds its `metrics.json`
under the same resolved config and the same model files (sizes and modification times) is not
repeated (re-running resumes; re-training the model at the same path re-runs everything).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from itertools import zip_longest
from pathlib import Path

from pretrain.errors import UserError
from pretrain.finetune.degenerate import DEGENERATE_SHARE

# Settings of the CPU comparison: bert-tiny-sized models train a few minutes per row. A row is a
# task preset plus overrides; `rotten_tomatoes_1k` trains on a fixed 1,000-review subset (the same
# for every seed and init), where what pretraining brings matters most. Its lr is 5e-4 because at
# 2e-4 a randomly initialized bert-tiny never leaves the majority class there (0.578 on every
# seed), which made any pretrained model look 5+ points better (docs/RESULTS.md).
ROWS = {
    "rotten_tomatoes_1k": (
        "rotten_tomatoes",
        [
            "task.max_train_examples=1000",
            "trainer.max_epochs=10",
            "optim.lr=5e-4",
            "batch_size=32",
            "patience=3",
        ],
    ),
    "rotten_tomatoes": (
        "rotten_tomatoes",
        ["trainer.max_epochs=3", "optim.lr=2e-4", "batch_size=32"],
    ),
    "wnut16": ("wnut16", ["trainer.max_epochs=10", "optim.lr=3e-4", "batch_size=16", "patience=3"]),
}
INITS = ("pretrained", "random")
FINGERPRINT_FILE = "model_fingerprint.txt"  # beside a run's metrics.json: which model it tuned


def model_fingerprint(path: Path) -> str:
    """Hash of the path, size and modification time of every file of the model (a file or a
    directory): it changes when the model is re-trained or re-exported, without reading the
    weights."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    lines = []
    for f in files:
        stat = f.stat()
        lines.append(
            f"{f.relative_to(path) if f != path else f.name}\t{stat.st_size}\t{stat.st_mtime_ns}"
        )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def finished_earlier(out: Path, config_yaml: str, fingerprint: str) -> dict | None:
    """The metrics of a finished run in `out` with this config and model, else None."""
    try:
        same = (out / "config.yaml").read_text() == config_yaml and (
            out / FINGERPRINT_FILE
        ).read_text() == fingerprint
        return json.loads((out / "metrics.json").read_text()) if same else None
    except FileNotFoundError:
        return None


def run_one(
    row: str, init: str, seed: int, args: argparse.Namespace, extra: list[str], fingerprint: str
) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pretrain.config_path import CONF_DIR
    from pretrain.finetune.app import finetune
    from pretrain.finetune.config import to_typed

    task, row_overrides = ROWS[row]
    out = Path(args.work_dir) / "finetune" / args.out_name / f"{row}-{init}-s{seed}"
    overrides = [
        f"task={task}",
        f"model_path={args.model}",
        f"init={init}",
        f"seed={seed}",
        f"work_dir={args.work_dir}",
        f"run_dir={out}",
        "logger=none",
        *row_overrides,
        *extra,
    ]
    if args.tokenizer_dir:
        overrides.append(f"tokenizer_dir={args.tokenizer_dir}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose(config_name="finetune", overrides=overrides))
    earlier = finished_earlier(out, OmegaConf.to_yaml(OmegaConf.structured(cfg)), fingerprint)
    if earlier is not None:
        print(f"{out}: finished earlier with the same config and model; reusing its metrics.json")
        return {**earlier, "row": row}
    result = finetune(cfg)
    (out / FINGERPRINT_FILE).write_text(fingerprint)
    return {**result, "row": row}


def majority_accuracy(predictions: str | Path) -> float | None:
    """Accuracy of always answering the test split's most frequent label (from a run's
    `test_predictions.jsonl`); None for token tasks or a missing file. Printed beside accuracy
    rows: an arm at this value has learned nothing (it answers one class)."""
    try:
        lines = Path(predictions).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    labels = [json.loads(line).get("label") for line in lines if line.strip()]
    if not labels or any(not isinstance(label, str) for label in labels):
        return None
    return max(labels.count(label) for label in set(labels)) / len(labels)


def is_degenerate(result: dict) -> bool:
    """Whether a run's metrics.json calls its test predictions degenerate."""
    return bool(result.get("degenerate", {}).get("test", {}).get("degenerate", False))


def summarize(results: list[dict]) -> dict:
    """`{task: {"metric", "pretrained": [..], "random": [..]}}` of test scores, in seed order;
    accuracy rows also get `"majority"`, the score of a constant majority-class answer, and rows
    with a degenerate run `"degenerate"`: `{init: [bool per seed]}`."""
    table: dict[str, dict] = {}
    flags: dict[str, dict[str, list[bool]]] = {}
    for r in results:
        key = r.get("row", r["task"])
        row = table.setdefault(key, {"metric": r["metric"], **{i: [] for i in INITS}})
        row[r["init"]].append(r["test"][r["metric"]])
        flags.setdefault(key, {i: [] for i in INITS})[r["init"]].append(is_degenerate(r))
        if r["metric"] == "accuracy" and "majority" not in row and r.get("predictions"):
            majority = majority_accuracy(r["predictions"])
            if majority is not None:
                row["majority"] = majority
    for key, row in table.items():
        if any(any(f) for f in flags[key].values()):
            row["degenerate"] = flags[key]
    return table


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _mark(flags: dict[str, list[bool]], init: str, seed: int) -> str:
    """`*` after the score of the `seed`-th run of `init` when it is degenerate."""
    return "*" if seed < len(flags.get(init, [])) and flags[init][seed] else ""


DEGENERATE_NOTE = (
    f"* degenerate run: it predicts one label for >= {100 * DEGENERATE_SHARE:g} % of the test "
    f"examples (token tasks: entities <= {100 * (1 - DEGENERATE_SHARE):g} % of the gold ones), "
    "so it learned nothing; its score is in the mean as it is (`degenerate` in its metrics.json)"
)


def format_table(table: dict, seeds: list[int]) -> str:
    """The markdown table; runs with degenerate test predictions marked `*`, with a footnote."""
    lines = [
        f"| task | test metric | pretrained (mean ± sd, {len(seeds)} seeds) | random init | "
        "per seed: pretrained / random | majority class |",
        "|---|---|---|---|---|---|",
    ]
    for task, row in table.items():
        flags = row.get("degenerate", {})
        per_seed = ", ".join(
            " / ".join(
                "-" if score is None else f"{score:.3f}{_mark(flags, init, s)}"
                for init, score in zip(INITS, scores, strict=True)
            )
            for s, scores in enumerate(zip_longest(row["pretrained"], row["random"]))
        )
        means = {i: _mean_sd(row[i]) + (" *" if any(flags.get(i, [])) else "") for i in INITS}
        majority = f"{row['majority']:.4f}" if "majority" in row else "-"
        lines.append(
            f"| {task} | {row['metric']} | {means['pretrained']} | "
            f"{means['random']} | {per_seed} | {majority} |"
        )
    if any("degenerate" in row for row in table.values()):
        lines += ["", DEGENERATE_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="work/runs/demo", help="checkpoint, run dir or HF dir")
    parser.add_argument("--tokenizer-dir", default=None, help="default: the model's tokenizer")
    parser.add_argument("--work-dir", default="work")
    parser.add_argument("--tasks", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--out-name", default="compare", help="runs go to <work-dir>/finetune/<out-name>/"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--inits",
        nargs="+",
        default=list(INITS),
        choices=list(INITS),
        help="which arms to run (default both; one arm, e.g. for a sweep of settings)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra bert-finetune override for every run (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results, started = [], time.time()
    fingerprint = model_fingerprint(Path(args.model))  # before any run: the model they all tune
    try:
        for task in args.tasks:
            for seed in args.seeds:
                for init in args.inits:
                    results.append(run_one(task, init, seed, args, args.overrides, fingerprint))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    table = summarize(results)
    elapsed = time.time() - started
    out = Path(args.work_dir) / "finetune" / args.out_name / "summary.json"
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "seeds": args.seeds,
                "settings": {
                    t: [f"task={ROWS[t][0]}", *ROWS[t][1], *args.overrides] for t in args.tasks
                },
                "table": table,
                "runs": results,
                "seconds": round(elapsed),
            },
            indent=2,
        )
    )
    print(f"\nDoes pretraining help? {args.model} vs the same architecture from random init")
    print(format_table(table, args.seeds))
    print(f"({len(results)} runs in {elapsed / 60:.1f} min; details in {out})")


if __name__ == "__main__":
    main()
