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

import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from pretrain.callbacks.throughput import ThroughputMonitor
from pretrain.checkpointing import LAST
from pretrain.config import (
    PretrainConfig,
    Runtime,
    TrainerConfig,
    register_configs,
    resolve_runtime,
    to_typed,
)
from pretrain.config_path import CONF_DIR
from pretrain.errors import exit_on_user_error
from pretrain.loggers import build_logger
from pretrain.report import final_report
from pretrain.run_dir import sweep_run_dir
from pretrain.run_setup import PreparedRun, prepare_run, resume_checkpoint
from pretrain.trainer_factory import BuiltTrainer, build_trainer, planned_world_size
from pretrain.versions import check_versions


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pretraining; return the final held-out metrics and where things are."""
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / LAST
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    runtime = resolve_runtime(cfg, planned_world_size(cfg.trainer))
    logger = build_logger(cfg.logger, run_dir, cfg.name, launch_rank())
    # Before the Trainer: resuming another world size's ZeRO checkpoint changes DeepSpeed's config.
    resume = resume_checkpoint(cfg, runtime, launch_rank())
    built = build_trainer(
        cfg, runtime, logger, downstream_eval(cfg, runtime), load_universal=resume.universal
    )
    budget = built.budget
    time_fraction = (lambda: budget.fraction) if budget is not None else None
    run = prepare_run(cfg, runtime, logger, time_fraction, resume)
    if not fit(built, run, cfg.trainer, last):  # exit_after_steps or preemption
        rank_zero_info(
            f"stopped at step {built.trainer.global_step} of {cfg.trainer.max_steps}; run the "
            f"same command again to resume from {last}"
        )
        return {"step": built.trainer.global_step, "checkpoint": str(last), "run_dir": str(run_dir)}
    summary = final_report(built.trainer, run.module, run.datamodule, runtime, last, run_dir)
    if built.trainer.is_global_zero:
        from pretrain.plot import draw_after_training  # never raises; matplotlib is optional

        draw_after_training(run_dir)  # curves.png beside summary.json
    return summary


def downstream_eval(
    cfg: PretrainConfig, runtime: Runtime
) -> Callable[[ThroughputMonitor], Callback] | None:
    """The evaluation callback's builder (it takes the throughput monitor to leave its time out);
    None when `eval_downstream.every_n_steps` is unset, which leaves fine-tuning unimported."""
    if not cfg.eval_downstream.every_n_steps:
        return None
    from pretrain.finetune.downstream_eval import DownstreamEval  # imports the fine-tuning app

    return partial(
        DownstreamEval, cfg.eval_downstream, cfg.work_dir, runtime.tokenizer_dir, cfg.model
    )


def fit(built: BuiltTrainer, run: PreparedRun, cfg: TrainerConfig, last: Path) -> bool:
    """Train this launch, leave its final step in `last`; whether the run is finished (max_steps
    or the time budget reached) rather than stopped early (exit_after_steps, preemption)."""
    trainer = built.trainer
    trainer.fit(
        run.module,
        datamodule=run.datamodule,
        ckpt_path=str(run.resume_from) if run.resume_from else None,
        weights_only=True,  # AtomicCheckpointIO reads weights-only anyway; DeepSpeed: see resume_checkpoint
    )
    if trainer.global_step % cfg.checkpoint_every_n_steps and not built.preemption.requested:
        trainer.save_checkpoint(last)  # the final step, when it fell between periodic saves
    return trainer.global_step >= cfg.max_steps or (
        built.budget is not None and built.budget.exhausted
    )


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
    check_versions()  # Lightning / DeepSpeed outside the tested range: one line, before any work
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
