"""`bert-pretrain`: pretrain BERT with MLM + NSP on a `bert-prep` directory.

Launch forms (any Hydra override may follow, e.g. `trainer.max_steps=2000 model=bert-small`):

    python -m pretrain.train experiment=demo                       # one process (= bert-pretrain)
    torchrun --nproc_per_node 8 -m pretrain.train strategy=ddp trainer.devices=8 ...   # one node
    torchrun --nproc_per_node 8 -m pretrain.train strategy=deepspeed_zero2 trainer.devices=8 ...
    torchrun --nnodes 2 --node_rank {0,1} --master_addr HOST --nproc_per_node 8 -m pretrain.train \
        strategy=deepspeed_zero3 trainer.num_nodes=2 trainer.devices=8 ...   # two nodes
    sbatch --nodes 4 slurm/pretrain.sbatch ...                     # a SLURM cluster

Re-running the same command resumes from the run directory's last checkpoint (`resume=auto`).
Every process computes the same run directory; Hydra writes its files and log on rank 0 only.
See docs/distributed.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from pretrain.callbacks.budget import TimeBudget
from pretrain.callbacks.exit_after_steps import ExitAfterSteps
from pretrain.callbacks.preemption import PreemptionCheckpoint
from pretrain.callbacks.progress import StepProgressBar
from pretrain.callbacks.throughput import ThroughputMonitor, resolve_peak_tflops
from pretrain.callbacks.training_state import LossMonitor, RNGStateCheckpoint
from pretrain.checkpointing import (
    LAST,
    AtomicCheckpointIO,
    find_resume_checkpoint,
    remove_unfinished_writes,
    validate_checkpoint,
)
from pretrain.config import (
    PretrainConfig,
    register_configs,
    resolve_runtime,
    to_typed,
)
from pretrain.config_path import CONF_DIR
from pretrain.data import LoaderSettings, PretrainDataModule
from pretrain.errors import UserError, exit_on_user_error
from pretrain.loggers import build_logger
from pretrain.model import ARCHITECTURE_FIELDS
from pretrain.module import BertPretrainingModule
from pretrain.run_dir import check_run_dir_owner, sweep_run_dir
from pretrain.strategy import distribution_kwargs
from pretrain.tokenizer_check import read_vocab
from pretrain.weights import load_pretrained


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pretraining; return the final held-out metrics and where things are."""
    run_dir = Path(cfg.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    checkpointing = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        # "step" is always among Lightning's monitor candidates: keep the K newest.
        monitor="step",
        mode="max",
        save_top_k=cfg.trainer.keep_last_checkpoints,
        save_last=True,
    )
    interactive = sys.stdout.isatty()
    trainer = L.Trainer(
        **distribution_kwargs(cfg.strategy, cfg.trainer),
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,  # training is step-based over an endless sample stream
        val_check_interval=cfg.trainer.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.limit_val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=cfg.trainer.enable_progress_bar and interactive,
        enable_model_summary=True,
        use_distributed_sampler=False,  # our sampler shards by rank itself
        # Under SLURM our PreemptionCheckpoint handles SIGUSR1 (at a step boundary), not Lightning.
        plugins=[AtomicCheckpointIO()]
        + ([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []),
        callbacks=[
            LossMonitor(),
            checkpointing,
            RNGStateCheckpoint(),
            preemption := PreemptionCheckpoint(checkpoint_dir / LAST),
        ]
        # A rich bar (steps, tokens/s, ETA) in terminals; plain lines (ThroughputMonitor) in
        # batch jobs, whose output files a redrawn bar would fill with carriage returns.
        + ([StepProgressBar()] if cfg.trainer.enable_progress_bar and interactive else []),
        logger=False,
        default_root_dir=str(run_dir),
    )
    world_size = trainer.world_size
    runtime = resolve_runtime(cfg, world_size)
    trainer.accumulate_grad_batches = runtime.accumulate_grad_batches
    # Lightning counts val_check_interval in micro-batches; ours is in optimizer steps.
    trainer.val_check_interval = cfg.trainer.val_check_interval * runtime.accumulate_grad_batches
    trainer.callbacks.append(
        ThroughputMonitor(
            cfg.trainer.log_every_n_steps,
            world_size,
            print_progress=not (cfg.trainer.enable_progress_bar and interactive),
            model_cfg=cfg.model,
            peak_tflops=resolve_peak_tflops(cfg.trainer.peak_tflops, cfg.trainer.accelerator),
        )
    )
    if cfg.trainer.exit_after_steps is not None:
        trainer.callbacks.append(ExitAfterSteps(cfg.trainer.exit_after_steps))
    budget = None
    if cfg.trainer.max_time_minutes is not None:
        budget = TimeBudget(cfg.trainer.max_time_minutes)
        trainer.callbacks.append(budget)
    if cfg.eval_downstream.every_n_steps:
        from pretrain.finetune.downstream_eval import DownstreamEval  # imports the fine-tuning app

        # Last: runs after the stop decisions above, so a stopping launch skips it.
        trainer.callbacks.append(
            DownstreamEval(cfg.eval_downstream, cfg.work_dir, runtime.tokenizer_dir, cfg.model)
        )
    logger = build_logger(cfg.logger, run_dir, cfg.name, trainer.global_rank)
    if logger:
        trainer.loggers = [logger]

    remove_unfinished_writes(checkpoint_dir)
    resume_from = find_resume_checkpoint(cfg.resume, checkpoint_dir)
    if resume_from is None and cfg.resume == "auto" and (run_dir / "config.yaml").is_file():
        rank_zero_info(
            f"note: {run_dir} holds an earlier launch of this run but no checkpoint under "
            f"{checkpoint_dir}: training starts from step 0"
        )
    if resume_from is not None:
        arch = {k: getattr(cfg.model, k) for k in ARCHITECTURE_FIELDS}
        deepspeed = cfg.strategy.name == "deepspeed"
        step = validate_checkpoint(
            resume_from,
            arch,
            world_size=world_size,
            zero_stage=cfg.strategy.zero_stage if deepspeed else None,
        )
        rank_zero_info(f"resuming from {resume_from} (step {step})")
    check_run_dir_owner(run_dir, asdict(cfg), runtime.manifest, allow=cfg.allow_run_dir_mismatch)

    _save_run_files(cfg, runtime.manifest, run_dir)
    if logger:
        logger.log_hyperparams(asdict(cfg))

    module = BertPretrainingModule(cfg.model, cfg.optim, cfg.schedule, cfg.trainer.max_steps)
    if budget is not None:
        module.time_fraction = lambda: budget.fraction
    if cfg.init_from and resume_from is None:
        initialize_from(module.model, cfg.init_from, cfg, runtime.tokenizer_dir)
    if cfg.trainer.compile:
        module.model.compile_blocks()  # in place: parameter names (checkpoints) unchanged
    rank_zero_info(
        f"model: {module.model.num_parameters() / 1e6:.2f} M parameters "
        f"({module.model.num_parameters(exclude_embeddings=True) / 1e6:.2f} M without embeddings); "
        f"world size {world_size}, micro-batch {cfg.data.micro_batch_size} × accumulation "
        f"{runtime.accumulate_grad_batches} × {world_size} = global batch {cfg.data.global_batch_size}"
    )
    datamodule = PretrainDataModule(
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
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=str(resume_from) if resume_from else None,
        weights_only=True,  # AtomicCheckpointIO reads weights-only anyway; DeepSpeed: vetted above
    )

    last = checkpoint_dir / LAST
    if trainer.global_step % cfg.trainer.checkpoint_every_n_steps and not preemption.requested:
        trainer.save_checkpoint(last)  # the final step, when it fell between periodic saves
    finished = trainer.global_step >= cfg.trainer.max_steps or (
        budget is not None and budget.exhausted
    )
    if not finished:  # exit_after_steps, preemption or a NaN stop
        rank_zero_info(
            f"stopped at step {trainer.global_step} of {cfg.trainer.max_steps}; run the "
            f"same command again to resume from {last}"
        )
        return {"step": trainer.global_step, "checkpoint": str(last), "run_dir": str(run_dir)}

    # Final held-out evaluation on the whole validation split.
    trainer.limit_val_batches = 1.0
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    summary = {
        "step": trainer.global_step,
        "val/mlm_acc": metrics["val/mlm_acc"],
        "val/mlm_acc_baseline": metrics["val/mlm_acc_baseline"],
        "val/nsp_acc": metrics["val/nsp_acc"],
        "val/mlm_loss": metrics["val/mlm_loss"],
        "val/nsp_loss": metrics["val/nsp_loss"],
        "tokenizer": str(runtime.tokenizer_dir),
        "data": str(runtime.data_dir),
        "checkpoint": str(last),
        "run_dir": str(run_dir),
    }
    _write_summary(summary, run_dir)
    return summary


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


@rank_zero_only
def _write_summary(summary: dict, run_dir: Path) -> None:
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
    print(f"  tokenizer   {summary['tokenizer']}")
    print(f"  data        {summary['data']}")
    print(f"  checkpoint  {summary['checkpoint']}")
    print(f"  run         {summary['run_dir']} (config.yaml, metrics, summary.json)")
    print("=" * min(width, 72))


register_configs()

# Hydra on a non-zero rank: no `.hydra/` copy of the config and no log file in the run directory
# (rank 0 writes both; the run directory itself is the same path on every rank).
NON_ZERO_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=disabled")


def launch_rank() -> int:
    """Global rank given by the launcher (torchrun: RANK, srun: SLURM_PROCID); 0 when alone."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pretrain")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    # Under -m each job gets its own run directory, or job N would resume job N-1's run.
    sweep_run_dir(cfg, HydraConfig.get())
    train(to_typed(cfg))


def main() -> None:
    """`bert-pretrain`: the Hydra app, with Hydra's own output on rank 0 only."""
    if launch_rank() != 0:
        sys.argv.extend(o for o in NON_ZERO_RANK_OVERRIDES if o not in sys.argv)
    _hydra_main()


if __name__ == "__main__":
    main()
