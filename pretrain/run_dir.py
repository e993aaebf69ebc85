"""Whose run directory is this? Refuse to continue, or overwrite, another experiment's run.

The run directory is `${work_dir}/runs/${name}` and a launch resumes from whatever it finds there
(`resume=auto`), so reusing a name by mistake would continue someone else's run: a different model,
other data or another seed, under the old checkpoints and logs. The directory's `config.yaml` and
`data_manifest.json` (written by the first launch) say which experiment it belongs to; a launch
whose model architecture, data or seed differ stops with both sides named, unless the user says
`allow_run_dir_mismatch=true`. Everything else (max_steps, learning rate, logging, strategy, ...)
may change between launches of one run.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from omegaconf import OmegaConf

from pretrain.errors import UserError
from pretrain.model import ARCHITECTURE_FIELDS, BertConfig

# The parts of a data manifest that identify the data set (not the library versions or the paths).
MANIFEST_IDENTITY = (
    "max_seq_length",
    "short_seq_prob",
    "dupe_factor",
    "seed",
    "tokenizer.sha256",
    "splits",
    "sources",
)


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def run_identity(config: dict, manifest: dict | None) -> dict[str, object]:
    """field -> value for everything that makes a run a different experiment."""
    # A field a run saved before it existed (e.g. norm_position) had its default value then.
    defaults = {f.name: f.default for f in fields(BertConfig)}
    identity: dict[str, object] = {
        f"model.{k}": _fallback(_get(config, f"model.{k}"), defaults[k])
        for k in ARCHITECTURE_FIELDS
    }
    identity["seed"] = config.get("seed")
    if manifest is not None:
        for key in MANIFEST_IDENTITY:
            identity[f"data ({key})"] = _get(manifest, key)
    return identity


def _fallback(value, default):
    return default if value is None else value


def _show(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_dir_owner(run_dir: Path, config: dict, manifest: dict, allow: bool) -> None:
    """Raise if `run_dir` holds the files of another experiment than `config` + `manifest`.

    `config` is this launch's resolved config as a plain dict (vocab_size filled in), `manifest`
    its data manifest. A directory without a saved config.yaml belongs to nobody yet."""
    saved_config = run_dir / "config.yaml"
    if allow or not saved_config.is_file():
        return
    theirs_config = OmegaConf.to_container(OmegaConf.load(saved_config))
    saved_manifest = run_dir / "data_manifest.json"
    theirs_manifest = (
        json.loads(saved_manifest.read_text(encoding="utf-8")) if saved_manifest.is_file() else None
    )
    theirs = run_identity(theirs_config, theirs_manifest)
    ours = run_identity(config, manifest if theirs_manifest is not None else None)
    diffs = [k for k in theirs if theirs[k] != ours[k]]
    if not diffs:
        return
    their_data = _get(theirs_config, "data.dir")
    our_data = _get(config, "data.dir")
    raise UserError(
        f"run directory {run_dir} belongs to another experiment: its config.yaml has "
        f"name={theirs_config.get('name')}, data.dir={their_data}, "
        + ", ".join(f"{k}={_show(theirs[k])}" for k in diffs)
        + f"; this launch has name={config.get('name')}, data.dir={our_data}, "
        + ", ".join(f"{k}={_show(ours[k])}" for k in diffs)
        + ". Pick another name= (or run_dir=) for a new run, or pass allow_run_dir_mismatch=true "
        "to continue this run with the new settings"
    )
