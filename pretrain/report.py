"""The end of a finished pretraining run: a held-out evaluation on the whole validation split, its
`summary.json` in the run directory, and the summary printed for the person who launched it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from pretrain.config import Runtime
from pretrain.word_order import WordOrderCheck, word_order_check

# Held-out pairs of the end-of-training word-order check (pretrain/word_order.py): one batch.
WORD_ORDER_PAIRS = 512

# The held-out metrics a summary reports, in its order (BertPretrainingModule's validation).
SUMMARY_METRICS = (
    "val/mlm_acc",
    "val/mlm_acc_baseline",
    "val/nsp_acc",
    "val/mlm_loss",
    "val/nsp_loss",
)


def final_report(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    runtime: Runtime,
    checkpoint: Path,
    run_dir: Path,
) -> dict:
    """Evaluate on the whole validation split; write `summary.json` and print the summary (rank 0);
    return the summary (every rank)."""
    # Trainer.validate has no batch limit of its own: lift the periodic validations' one.
    trainer.limit_val_batches = 1.0
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    ids = datamodule.manifest["special_token_ids"]
    word_order = word_order_check(
        module.model,
        datamodule.val_set,
        datamodule.val_collator,
        [ids["pad"], ids["cls"], ids["sep"], ids["mask"]],
        pairs=WORD_ORDER_PAIRS,
        seed=datamodule.val_collator.seed,
    )
    summary = {
        "step": trainer.global_step,
        **{k: metrics[k] for k in SUMMARY_METRICS},
        "word_order": word_order.as_dict(),
        "tokenizer": str(runtime.tokenizer_dir),
        "data": str(runtime.data_dir),
        "checkpoint": str(checkpoint),
        "run_dir": str(run_dir),
    }
    write_summary(summary, run_dir)
    return summary


@rank_zero_only
def write_summary(summary: dict, run_dir: Path) -> None:
    """`run_dir/summary.json`, and the summary on stdout."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    acc, base = summary["val/mlm_acc"], summary["val/mlm_acc_baseline"]
    width = shutil.get_terminal_size((100, 20)).columns
    print("=" * min(width, 72))
    print(f"pretraining finished at step {summary['step']}")
    print(
        f"  held-out MLM accuracy  {acc:.4f}   most-frequent-token baseline {base:.4f}"
        f"  ({acc / base:.2f}×)"
    )
    print(f"  held-out NSP accuracy  {summary['val/nsp_acc']:.4f}   chance 0.5000")
    print(WordOrderCheck.from_dict(summary["word_order"]).line())
    print(f"  tokenizer   {summary['tokenizer']}")
    print(f"  data        {summary['data']}")
    print(f"  checkpoint  {summary['checkpoint']}")
    print(f"  run         {summary['run_dir']} (config.yaml, metrics, summary.json)")
    print("=" * min(width, 72))
