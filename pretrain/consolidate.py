"""`bert-consolidate`: turn a sharded DeepSpeed checkpoint into one fp32 state dict.

    bert-consolidate work/runs/NAME/checkpoints/last.ckpt model.pt

The input is a checkpoint directory written by `bert-pretrain` under `strategy=deepspeed_zero*`
(every rank's shards present); the output is one file, readable without DeepSpeed or Lightning:

    {"state_dict": {...fp32 tensors...}, "model_config": {...BertConfig fields...},
     "global_step": int, "source": str}

`load_consolidated(path)` rebuilds `pretrain.model.BertForPreTraining` from it (strict loading:
no missing or unexpected keys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pretrain.checkpointing import validate_checkpoint
from pretrain.errors import UserError
from pretrain.model import BertConfig, BertForPreTraining

MODULE_PREFIX = "model."  # the LightningModule's attribute holding BertForPreTraining


def consolidate(checkpoint: Path, output: Path) -> dict:
    """Gather the fp32 master weights of every rank's shard into one file; return what was saved."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(
            f"{checkpoint} is not a DeepSpeed checkpoint directory (a single-file checkpoint "
            f"already holds the whole model under 'state_dict')"
        )
    # Completeness (every shard there) and identity; the stage is read from the checkpoint itself.
    meta = _metadata(checkpoint)
    step = validate_checkpoint(checkpoint, {}, world_size=None, zero_stage=meta["stage"])
    if meta["stage"] == 0:  # plain data parallel: rank 0 holds the whole (maybe half) model
        module = meta["module"]
        state = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    model_state = {
        k[len(MODULE_PREFIX) :]: v.detach().clone().contiguous()
        for k, v in state.items()
        if k.startswith(MODULE_PREFIX)
    }
    if not model_state:
        raise UserError(f"checkpoint {checkpoint} holds no `{MODULE_PREFIX}*` weights")
    result = {
        "state_dict": model_state,
        "model_config": meta["model_config"],
        "global_step": step,
        "source": str(checkpoint),
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, output)
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
    state = torch.load(rank0, map_location="cpu", weights_only=False)
    hparams = state.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise UserError(
            f"{checkpoint} lacks hyper_parameters.model: not a `bert-pretrain` checkpoint"
        )
    stage = (state.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    return {"stage": stage, "model_config": dict(hparams["model"]), "module": state.get("module")}


def load_consolidated(path: Path) -> BertForPreTraining:
    """The model of a `bert-consolidate` output, loaded strictly, in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
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
    args = parser.parse_args(argv)
    try:
        result = consolidate(args.checkpoint, args.output)
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
