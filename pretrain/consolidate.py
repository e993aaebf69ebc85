"""`bert-consolidate`: turn a sharded DeepSpeed checkpoint into one fp32 state dict.

    bert-consolidate work/runs/NAME/checkpoints/last.ckpt model.pt

The input is a checkpoint directory written by `bert-pretrain` under `strategy=deepspeed_zero*`
(every rank's shards present); the output is one file, readable without DeepSpeed or Lightning:

    {"state_dict": {...fp32 tensors...}, "model_config": {...BertConfig fields...},
     "global_step": int, "source": str, "run_dir": str}

with `model.pt.sha256` beside it. Every tool that takes a checkpoint (`bert-export`,
`bert-finetune model=`, `init_from=`) accepts the file; they also accept the DeepSpeed directory or
its run directory directly and consolidate in memory (`consolidated_state`). `load_consolidated`
rebuilds `pretrain.model.BertForPreTraining` from the file (strict: no missing or unexpected keys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.checkpointing import AtomicCheckpointIO, validate_checkpoint, verify_resumable
from pretrain.errors import UserError
from pretrain.integrity import (
    load_weights_only,
    use_cpu_accelerator_without_cuda,
    verify_checkpoint,
)
from pretrain.model import BertConfig, BertForPreTraining

MODULE_PREFIX = "model."  # the LightningModule's attribute holding BertForPreTraining


def consolidated_state(checkpoint: Path) -> dict:
    """The fp32 master weights of every rank's shard, gathered in memory on the CPU, with the
    model config and the run the checkpoint belongs to (see the module docstring's layout)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(
            f"{checkpoint} is not a DeepSpeed checkpoint directory (a single-file checkpoint "
            f"already holds the whole model under 'state_dict')"
        )
    # Checksums, completeness (every shard there), weights-only vetting of every shard, identity;
    # the stage is read from the checkpoint itself.
    meta = _metadata(checkpoint)
    step = validate_checkpoint(checkpoint, {}, world_size=None, zero_stage=meta["stage"])
    if meta["stage"] == 0:  # plain data parallel: rank 0 holds the whole (maybe half) model
        module = meta["module"]
        state = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    else:
        use_cpu_accelerator_without_cuda()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    model_state = {
        k[len(MODULE_PREFIX) :]: v.detach().clone().contiguous()
        for k, v in state.items()
        if k.startswith(MODULE_PREFIX)
    }
    if not model_state:
        raise UserError(f"checkpoint {checkpoint} holds no `{MODULE_PREFIX}*` weights")
    return {
        "state_dict": model_state,
        "model_config": meta["model_config"],
        "global_step": step,
        "source": str(checkpoint),
        # checkpoints/<name> of a run directory: its config.yaml names the tokenizer
        "run_dir": str(checkpoint.resolve().parent.parent),
    }


def consolidate(checkpoint: Path, output: Path, overwrite: bool = False) -> dict:
    """Write `consolidated_state(checkpoint)` to `output` (atomically, with `output.sha256`)."""
    output = Path(output)
    if output.is_dir() or (output.exists() and not overwrite):
        raise UserError(
            f"{output} already exists; give a new output file, or pass --overwrite to replace it"
        )
    result = consolidated_state(checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(result, output)
    return result


def _metadata(checkpoint: Path) -> dict:
    latest = checkpoint / "latest"
    tag = latest.read_text().strip() if latest.is_file() else ""
    tag_dir = checkpoint / tag
    files = [
        tag_dir / "mp_rank_00_model_states.pt",
        tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    ]
    rank0 = next((f for f in files if tag and f.is_file()), None)
    if rank0 is None:
        raise UserError(
            f"{checkpoint} is not a complete DeepSpeed checkpoint (no `latest` tag or no rank-0 "
            f"model states)"
        )
    verify_resumable(checkpoint)
    state = load_weights_only(rank0, checkpoint, deepspeed=True)
    hparams = state.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise UserError(
            f"{checkpoint} lacks hyper_parameters.model: not a `bert-pretrain` checkpoint"
        )
    stage = (state.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    return {"stage": stage, "model_config": dict(hparams["model"]), "module": state.get("module")}


def load_consolidated(path: Path) -> BertForPreTraining:
    """The model of a `bert-consolidate` output, loaded strictly, in eval mode."""
    verify_checkpoint(path)
    saved = load_weights_only(path)
    model = BertForPreTraining(BertConfig(**saved["model_config"]))
    model.load_state_dict(saved["state_dict"], strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bert-consolidate",
        description="Consolidate a sharded DeepSpeed checkpoint of bert-pretrain into one fp32 "
        "state dict that loads into pretrain.model.BertForPreTraining.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory, e.g. .../last.ckpt")
    parser.add_argument("output", type=Path, help="file to write, e.g. model.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        result = consolidate(args.checkpoint, args.output, overwrite=args.overwrite)
        load_consolidated(args.output)  # proves the file is complete: strict load
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    n = sum(v.numel() for v in result["state_dict"].values())
    print(
        f"wrote {args.output}: {len(result['state_dict'])} tensors, {n / 1e6:.2f} M values "
        f"(fp32), step {result['global_step']}, from {args.checkpoint}"
    )


if __name__ == "__main__":
    main()
