"""Everything a pretraining launch settles before its first step: which checkpoint it resumes
(checked before use), that the run directory is this run's, the run files, the module and the data."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import OmegaConf

from pretrain.checkpointing import (
    deepspeed_world_size,
    find_resume_checkpoint,
    remove_unfinished_writes,
    validate_checkpoint,
)
from pretrain.config import PretrainConfig, Runtime
from pretrain.data import LoaderSettings, PretrainDataModule
from pretrain.elastic import universal_checkpoint
from pretrain.errors import UserError
from pretrain.model import ARCHITECTURE_FIELDS
from pretrain.module import BertPretrainingModule
from pretrain.run_dir import check_run_dir_owner
from pretrain.tokenizer_check import read_vocab
from pretrain.weights import load_pretrained


@dataclass
class Resume:
    """The checkpoint a launch continues from."""

    path: Path | None
    """What Lightning loads; None: training starts from step 0."""
    universal: bool = False
    """`path` is a universal conversion (`pretrain/elastic.py`): DeepSpeed must be told so."""


@dataclass
class PreparedRun:
    """What `Trainer.fit` is given."""

    module: BertPretrainingModule
    datamodule: PretrainDataModule
    resume_from: Path | None  # None: training starts from step 0


def prepare_run(
    cfg: PretrainConfig,
    runtime: Runtime,
    logger: Logger | None,
    time_fraction: Callable[[], float] | None,
    resume: Resume,
) -> PreparedRun:
    """Write the run directory's files, build the module (`time_fraction`: the LR schedule's
    wall-clock hook) and the data module, for a launch resuming `resume` (chosen, checked and
    the run directory claimed by `resume_checkpoint`)."""
    resume_from = resume.path
    run_dir = Path(cfg.run_dir)
    _save_run_files(cfg, runtime.manifest, run_dir)
    if logger:
        logger.log_hyperparams(asdict(cfg))
    module = build_module(cfg, runtime, resume_from, time_fraction)
    return PreparedRun(module, build_datamodule(cfg, runtime), resume_from)


def resume_checkpoint(cfg: PretrainConfig, runtime: Runtime, rank: int = 0) -> Resume:
    """The checkpoint this launch continues (`cfg.resume`), vetted for this model, world size and
    ZeRO stage before anything loads it; then the run directory is claimed (`check_run_dir_owner`),
    and only then is a DeepSpeed checkpoint of another world size converted to the universal
    format (`cfg.elastic_resume`; rank 0 converts, the others wait)."""
    world_size = runtime.world_size
    run_dir = Path(cfg.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    remove_unfinished_writes(checkpoint_dir)
    resume_from = find_resume_checkpoint(cfg.resume, checkpoint_dir)
    if resume_from is None and cfg.resume == "auto" and (run_dir / "config.yaml").is_file():
        rank_zero_info(
            f"note: {run_dir} holds an earlier launch of this run but no checkpoint under "
            f"{checkpoint_dir}: training starts from step 0"
        )
    if resume_from is None:
        _claim_run_dir(cfg, runtime)
        return Resume(None)
    arch = {k: getattr(cfg.model, k) for k in ARCHITECTURE_FIELDS}
    deepspeed = cfg.strategy.name == "deepspeed"
    step = validate_checkpoint(
        resume_from,
        arch,
        world_size=world_size,
        zero_stage=cfg.strategy.zero_stage if deepspeed else None,
        elastic=cfg.elastic_resume,
    )
    _claim_run_dir(cfg, runtime)
    if deepspeed and (written_by := deepspeed_world_size(resume_from)) != world_size:
        universal = universal_checkpoint(resume_from, step, rank, checkpoint_dir)
        rank_zero_info(
            f"resuming from {resume_from} (step {step}), written by {written_by} processes, on "
            f"{world_size} through its universal conversion {universal}"
        )
        return Resume(universal, universal=True)
    rank_zero_info(f"resuming from {resume_from} (step {step})")
    return Resume(resume_from)


def build_module(
    cfg: PretrainConfig,
    runtime: Runtime,
    resume_from: Path | None,
    time_fraction: Callable[[], float] | None,
) -> BertPretrainingModule:
    """The module, initialized from `cfg.init_from` when not resuming, compiled if asked."""
    module = BertPretrainingModule(
        cfg.model, cfg.optim, cfg.schedule, cfg.trainer.max_steps, time_fraction=time_fraction
    )
    if cfg.init_from and resume_from is None:
        initialize_from(module.model, cfg.init_from, cfg, runtime.tokenizer_dir)
    if cfg.trainer.compile:
        module.model.compile_blocks()  # in place: parameter names (checkpoints) unchanged
    world_size = runtime.world_size
    rank_zero_info(
        f"model: {module.model.num_parameters() / 1e6:.2f} M parameters "
        f"({module.model.num_parameters(exclude_embeddings=True) / 1e6:.2f} M without embeddings); "
        f"world size {world_size}, micro-batch {cfg.data.micro_batch_size} × accumulation "
        f"{runtime.accumulate_grad_batches} × {world_size} = global batch {cfg.data.global_batch_size}"
    )
    return module


def build_datamodule(cfg: PretrainConfig, runtime: Runtime) -> PretrainDataModule:
    return PretrainDataModule(
        runtime.data_dir,
        runtime.tokenizer_dir,
        runtime.manifest,
        cfg.data.masking,
        LoaderSettings(
            cfg.data.global_batch_size,
            cfg.data.micro_batch_size,
            cfg.data.val_batch_size,
            cfg.data.num_workers,
            cfg.seed,
        ),
        val_mlm_probability=cfg.data.val_mlm_probability,
        verify=cfg.data.verify,
    )


def initialize_from(model, path: str, cfg: PretrainConfig, tokenizer_dir: Path) -> None:
    """Copy weights of a pretrained model (HF dir, checkpoint or run dir) into `model`."""
    source = load_pretrained(path)
    diffs = [
        f"model.{k}: {getattr(source.config, k)} there, {getattr(cfg.model, k)} here"
        for k in ARCHITECTURE_FIELDS
        if getattr(source.config, k) != getattr(cfg.model, k)
    ]
    if diffs:
        raise UserError(
            f"init_from={path} has another architecture ({'; '.join(diffs)}); set model.* to match"
        )
    theirs, ours = read_vocab(source.tokenizer_dir), read_vocab(tokenizer_dir)
    if theirs != ours:
        raise UserError(
            f"init_from={path} uses another vocabulary than the data's tokenizer {tokenizer_dir}; "
            f"build the data with its tokenizer (bert-prep tokenizer_dir={source.tokenizer_dir})"
        )
    model.load_state_dict(source.model.state_dict())
    rank_zero_info(f"initialized from {source.source}")


def _claim_run_dir(cfg: PretrainConfig, runtime: Runtime) -> None:
    check_run_dir_owner(
        Path(cfg.run_dir), asdict(cfg), runtime.manifest, allow=cfg.allow_run_dir_mismatch
    )


@rank_zero_only
def _save_run_files(cfg: PretrainConfig, manifest: dict, run_dir: Path) -> None:
    """Everything needed to reproduce the run, beside its checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # Atomically: the other ranks may be reading them meanwhile (check_run_dir_owner).
    for name, text in (
        ("config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg))),
        ("data_manifest.json", json.dumps(manifest, indent=2)),
    ):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)
    rank_zero_info(f"run directory: {run_dir}")
