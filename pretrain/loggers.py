"""Metric loggers chosen by `logger.name`: CSV files, TensorBoard, Weights & Biases, or none.

Lightning's loggers write from rank 0 only (their `log_*` methods and the experiment object are
`rank_zero_only`). W&B runs online when credentials are configured and offline otherwise (compute
nodes without internet; upload later with `wandb sync <run dir>/wandb/offline-run-*`);
`logger.mode=online` without credentials is refused up front. The W&B run id is kept in the run
directory, so a resumed or requeued job keeps logging into the same W&B run, not a new one.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from pretrain.config import LoggerConfig
from pretrain.errors import UserError

WANDB_ID_FILE = "wandb_run_id"


def build_logger(
    cfg: LoggerConfig, run_dir: Path, run_name: str, global_rank: int
) -> Logger | None:
    if cfg.name == "none":
        return None
    if cfg.name == "csv":
        # One version_N folder per launch: a resumed run appends a folder, never overwrites one.
        return CSVLogger(save_dir=str(run_dir), name="csv")
    if cfg.name == "tensorboard":
        # Likewise one version_N folder of event files per launch; TensorBoard shows them as one
        # run per folder. No "hp_metric" placeholder scalar (Lightning logs -1 by default).
        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", default_hp_metric=False)
    if cfg.mode == "online" and not wandb_credentials():
        # Without a key wandb would prompt for one (and hang in a batch job) or fail mid-setup.
        raise UserError(
            "logger.mode=online but no W&B credentials were found (no WANDB_API_KEY, no "
            "api.wandb.ai entry in ~/.netrc); run `wandb login` or set WANDB_API_KEY, or log "
            "offline with logger.mode=offline (or auto) and upload later with "
            f"`wandb sync {run_dir}/wandb/offline-run-*`"
        )
    offline = cfg.mode == "offline" or (cfg.mode == "auto" and not wandb_credentials())
    return WandbLogger(
        project=cfg.project,
        entity=cfg.entity,
        name=run_name,
        save_dir=str(run_dir),
        offline=offline,
        id=stable_run_id(run_dir, global_rank),
        resume="allow",
    )


def stable_run_id(run_dir: Path, global_rank: int) -> str:
    """The run's W&B id: created once (by rank 0, the only one that logs) and reused after."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    if global_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


def wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    )
