"""Whose run directory is this? Refuse to continue another experiment's run, and place sweep jobs.

The run directory is `${work_dir}/runs/${name}` and a launch resumes from whatever it finds there
(`resume=auto`), so reusing a name by mistake (or re-running a command with one setting changed)
would continue a different experiment under the old checkpoints and logs, and report the mix as
its own result. The directory's `config.yaml` and `data_manifest.json` (written by the first
launch) say how it was trained; `check_run_dir_owner` stops a launch that would train differently,
naming the fields and both values, unless the user says `allow_run_dir_mismatch=true` (a
deliberate change, e.g. a longer trainer.max_steps).

Training-changing (must match to resume; `TRAINING_FIELDS` + the manifest):
  * `model.*` except the switches documented as the same math (`MODEL_SAME_MATH`: sparse_mlm,
    fused_qkv, fast_cpu_bf16_backward, activation_checkpointing): architecture, dropout, init;
  * the data's identity: `MANIFEST_IDENTITY` of data_manifest.json (not data.dir, so a moved
    copy of the same data is the same data);
  * `seed`, `init_from`;
  * `optim.*` except `optim.implementation` (fused / foreach / for_loop: the same update);
  * `schedule.*`, `data.global_batch_size`, `data.masking.*`;
  * `trainer.max_steps`, `trainer.max_time_minutes` (both shape the LR schedule),
    `trainer.gradient_clip_val`.
Not training-changing (may differ between launches of one run): data.micro_batch_size (only the
accumulation), data.num_workers, data.dir, data.tokenizer_dir (checked against the manifest),
data.val_*, data.verify, trainer.val_*/limit_val_batches, logging, checkpoint intervals,
keep_last_checkpoints, exit_after_steps, deterministic, strategy, devices, num_nodes,
accelerator, precision, compile, the progress bar, logger, resume, peak_tflops, eval_downstream.

A saved config written before a field existed lacks it: it trained with the field's default.

Under a Hydra sweep (`-m`) every job would otherwise share `${work_dir}/runs/${name}`, each
resuming the previous job's finished run: `sweep_run_dir` gives each job its own sub-directory
named after its overrides (see `sweep_subdir`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, fields
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pretrain.config import OptimConfig, PretrainConfig, ScheduleConfig
from pretrain.errors import UserError
from pretrain.masking import MaskingConfig
from pretrain.model import BertConfig

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
# Model switches that change speed or memory, not the function computed or its training.
MODEL_SAME_MATH = ("sparse_mlm", "fused_qkv", "fast_cpu_bf16_backward", "activation_checkpointing")
# The config fields a resumed launch must share with the run (see the module docstring).
TRAINING_FIELDS = (
    *(f"model.{f.name}" for f in fields(BertConfig) if f.name not in MODEL_SAME_MATH),
    "seed",
    "init_from",
    *(f"optim.{f.name}" for f in fields(OptimConfig) if f.name != "implementation"),
    *(f"schedule.{f.name}" for f in fields(ScheduleConfig)),
    "data.global_batch_size",
    *(f"data.masking.{f.name}" for f in fields(MaskingConfig)),
    "trainer.max_steps",
    "trainer.max_time_minutes",
    "trainer.gradient_clip_val",
)
_ABSENT = object()
SHOWN_DIFFS = 6  # the message stays one readable line


def _get(tree: dict, dotted: str, absent=None):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return absent
        tree = tree[part]
    return tree


def _defaults() -> dict:
    """The schema's defaults, for fields a run saved before they existed (it used these)."""
    return asdict(PretrainConfig())


def run_identity(config: dict, manifest: dict | None) -> dict[str, object]:
    """field -> value for everything that makes a launch train differently (module docstring)."""
    defaults = _defaults()
    identity: dict[str, object] = {}
    for key in TRAINING_FIELDS:
        value = _get(config, key, _ABSENT)
        identity[key] = _get(defaults, key) if value is _ABSENT else value
    if manifest is not None:
        for key in MANIFEST_IDENTITY:
            identity[f"data ({key})"] = _get(manifest, key)
    return identity


def _show(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _listing(keys: list[str], identity: dict, config: dict) -> str:
    shown = [f"{k}={_show(identity[k])}" for k in keys[:SHOWN_DIFFS]]
    if any(k.startswith("data (") for k in keys[:SHOWN_DIFFS]):
        shown.append(f"data.dir={_get(config, 'data.dir')}")
    more = len(keys) - SHOWN_DIFFS
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def check_run_dir_owner(run_dir: Path, config: dict, manifest: dict, allow: bool) -> None:
    """Raise if resuming `run_dir` would train differently from `config` + `manifest`.

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
    raise UserError(
        f"run directory {run_dir} was trained with {_listing(diffs, theirs, theirs_config)}; "
        f"this launch has {_listing(diffs, ours, config)}; resuming it would continue another "
        "experiment: pick another name= (or run_dir=) or pass allow_run_dir_mismatch=true "
        "(e.g. to extend trainer.max_steps)"
    )


SWEEP_SUBDIR_MAX = 120  # characters; longer ones end in a hash of the whole (unique and stable)


def sweep_subdir(override_dirname: str) -> str:
    """A job's sub-directory: Hydra's `override_dirname` (its overrides, sorted, `k=v,k=v`) made
    safe as one path component; the same sweep re-run gets the same names, so it resumes."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname)
    if len(safe) > SWEEP_SUBDIR_MAX:
        digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
        safe = f"{safe[: SWEEP_SUBDIR_MAX - 11]}-{digest}"
    return safe


def sweep_run_dir(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Under `-m`, move a job whose run_dir is the default into `<run_dir>/<sweep_subdir>`.

    `hydra_cfg` is `HydraConfig.get()`. A run_dir set by the user (command line or YAML) is kept:
    interpolating swept fields into it (`run_dir='${work_dir}/runs/lr${optim.lr}'`) names the jobs
    another way. Jobs without task overrides left (e.g. `-m name=a,b`) keep the plain default."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    default = PretrainConfig.run_dir
    if OmegaConf.to_container(cfg, resolve=False).get("run_dir") != default:
        return
    subdir = sweep_subdir(hydra_cfg.job.override_dirname)
    if subdir:
        cfg.run_dir = f"{default}/{subdir}"
