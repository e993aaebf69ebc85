"""Tiny fine-tunings for tests: synthetic keyword sentences (sequence labels or BIO tags), written as
the split files `bert-finetune task.train=... task.dev=... task.test=...` reads, a freshly
initialized bert-tiny to fine-tune, and an in-process `bert-finetune` run (seconds each)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

SIZES = {"train": 256, "dev": 64, "test": 64}
"""Examples per split of `keyword_task`."""
FAST = [
    "logger=none",
    "trainer.accelerator=cpu",
    "batch_size=16",
    "optim.lr=1e-3",
    "task.max_seq_length=32",
]
"""Overrides of every `finetune_tiny` run: no logger, CPU, short sequences."""


def vocabulary_words(tokenizer_dir: Path, n: int = 40) -> list[str]:
    """The first `n` alphabetic whole words (longer than 3 letters) of a tokenizer's vocabulary."""
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return sorted(w for w in vocab["model"]["vocab"] if w.isalpha() and len(w) > 3)[:n]


def synthetic(words: list[str], n: int, seed: int, tokens: bool) -> list[dict]:
    """Sentences of filler words; half contain the key phrase `words[0] words[1]`.
    Sequences: label `yes` iff the phrase occurs. Tokens: the phrase is a `KEY` entity."""
    rng = random.Random(seed)
    key, filler = words[:2], words[2:]
    rows = []
    for i in range(n):
        sent = [rng.choice(filler) for _ in range(rng.randint(4, 9))]
        tags = ["O"] * len(sent)
        if i % 2:
            at = rng.randrange(len(sent))
            sent[at:at] = key
            tags[at:at] = ["B-KEY", "I-KEY"]
        if tokens:
            rows.append({"tokens": sent, "tags": tags})
        else:
            rows.append({"text": " ".join(sent), "label": "yes" if i % 2 else "no"})
    return rows


def write_splits(root: Path, rows: dict[str, list[dict]], fmt: str) -> list[str]:
    """Write each split as `root/<split>.<fmt>` (csv or jsonl); return the `task.<split>=` overrides."""
    root.mkdir(parents=True, exist_ok=True)
    overrides = []
    for split, records in rows.items():
        path = root / f"{split}.{fmt}"
        if fmt == "csv":
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, list(records[0]))
                w.writeheader()
                w.writerows(records)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        overrides.append(f"task.{split}={path}")
    return overrides


def keyword_task(tokenizer_dir: Path, root: Path, tokens: bool) -> list[str]:
    """The keyword task in `SIZES` (sequences as csv, tokens as jsonl) under `root`; its overrides."""
    words = vocabulary_words(tokenizer_dir)
    rows = {s: synthetic(words, n, i, tokens) for i, (s, n) in enumerate(SIZES.items())}
    return write_splits(root, rows, "jsonl" if tokens else "csv")


def export_tiny_model(tokenizer_dir: Path, out: Path) -> Path:
    """A freshly initialized bert-tiny (seed 0) with this 1000-token tokenizer, exported to `out`
    as a Hugging Face directory."""
    import torch

    from pretrain.export import export_hf
    from pretrain.model import BertForPreTraining, preset
    from pretrain.weights import Pretrained

    torch.manual_seed(0)
    cfg = preset("bert-tiny", vocab_size=1000, max_position_embeddings=64)
    pretrained = Pretrained(BertForPreTraining(cfg), cfg, tokenizer_dir, source=Path("synthetic"))
    return export_hf(pretrained, out)


def finetune_config(work_dir: Path, *overrides: str):
    """The typed `bert-finetune` config of `FAST` plus `overrides`, as the command line composes it."""
    from hydra import compose, initialize_config_dir

    from pretrain.config_path import CONF_DIR
    from pretrain.finetune.config import register_configs, to_typed

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="finetune", overrides=[f"work_dir={work_dir}", *FAST, *overrides])
    return to_typed(cfg)


def finetune_tiny(work_dir: Path, *overrides: str) -> dict:
    """`bert-finetune` in this process with `FAST` plus `overrides`; the metrics it wrote."""
    from pretrain.finetune.app import finetune

    return finetune(finetune_config(work_dir, *overrides))
