"""The LightningModule: MLM + NSP training of `pretrain.model.BertForPreTraining`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

from pretrain.config import OptimConfig, ScheduleConfig
from pretrain.model import BertConfig, BertForPreTraining, pretraining_loss
from pretrain.optim import build_optimizer, build_scheduler, repair_loaded_optimizer


class BertPretrainingModule(L.LightningModule):
    """Wraps the plain model; owns the losses, metrics, optimizer and schedule."""

    def __init__(
        self,
        model_cfg: BertConfig,
        optim_cfg: OptimConfig,
        schedule_cfg: ScheduleConfig,
        max_steps: int,
        time_fraction: Callable[[], float] | None = None,
    ):
        """`time_fraction`: the share of a wall-clock budget spent so far, read by the LR schedule
        at every step (`pretrain/callbacks/budget.py:TimeBudget`); None: no budget."""
        super().__init__()
        # Plain dicts in the checkpoint, so it loads without this package's classes.
        self.save_hyperparameters(
            {
                "model": asdict(model_cfg),
                "optim": asdict(optim_cfg),
                "schedule": asdict(schedule_cfg),
                "max_steps": max_steps,
            }
        )
        self.model_cfg, self.optim_cfg, self.schedule_cfg = model_cfg, optim_cfg, schedule_cfg
        self.max_steps = max_steps
        self._group_weight_decay: list[float] = []  # per optimizer group, as built
        self.model = BertForPreTraining(model_cfg)
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_label_counts: torch.Tensor | None = None
        self.time_fraction = time_fraction

    def _step(
        self, batch: dict
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(metrics, MLM logits (M, V) at masked positions, their targets (M,), NSP logits (B, 2))."""
        labels = batch["labels"]  # (B, T), -100 where nothing is predicted
        out = self.model(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], mlm_labels=labels
        )
        loss, mlm_loss, nsp_loss = pretraining_loss(out, labels, batch["next_sentence_label"])
        # Logits only at masked positions whether or not the model computed them sparsely.
        mlm_logits = out.mlm_logits if out.mlm_logits.dim() == 2 else out.mlm_logits[labels != -100]
        targets = labels[labels != -100]  # (M,)
        metrics = {
            "loss": loss,
            "mlm_loss": mlm_loss,
            "nsp_loss": nsp_loss,
            "mlm_acc": (mlm_logits.argmax(-1) == targets).float().mean(),
            "nsp_acc": (out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).float().mean(),
        }
        return metrics, mlm_logits, targets, out.nsp_logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        metrics, *_ = self._step(batch)
        B = batch["input_ids"].size(0)
        loss = metrics.pop("loss")
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=B
        )
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            batch_size=B,
        )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradient norm before clipping, only on logging steps (it costs a pass over the grads).
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:  # none under DeepSpeed ZeRO: gradients live in its partitions
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                )
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    # Validation accumulates sums, not per-batch means: batches hold different numbers of masked
    # tokens, and the most-frequent-token baseline needs the label histogram of the whole split.
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {
            k: torch.zeros((), device=self.device, dtype=torch.float64)
            for k in (
                "mlm_loss",
                "mlm_correct",
                "mlm_count",
                "nsp_loss",
                "nsp_correct",
                "nsp_count",
            )
        }
        self._val_label_counts = torch.zeros(
            self.model_cfg.vocab_size, device=self.device, dtype=torch.long
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, mlm_logits, targets, nsp_logits = self._step(batch)
        nsp_labels = batch["next_sentence_label"]
        s = self._val_sums
        s["mlm_loss"] += F.cross_entropy(mlm_logits.float(), targets, reduction="sum")
        s["mlm_correct"] += (mlm_logits.argmax(-1) == targets).sum()
        s["mlm_count"] += targets.numel()
        s["nsp_loss"] += F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum")
        s["nsp_correct"] += (nsp_logits.argmax(-1) == nsp_labels).sum()
        s["nsp_count"] += nsp_labels.numel()
        self._val_label_counts += torch.bincount(targets, minlength=self.model_cfg.vocab_size)

    def on_validation_epoch_end(self) -> None:
        reduce = self.trainer.strategy.reduce
        s = {k: reduce(v, reduce_op="sum") for k, v in self._val_sums.items()}
        counts = reduce(self._val_label_counts.double(), reduce_op="sum")
        if s["mlm_count"] == 0:
            return
        mlm_loss = s["mlm_loss"] / s["mlm_count"]
        nsp_loss = s["nsp_loss"] / s["nsp_count"]
        metrics = {
            "val/loss": mlm_loss + nsp_loss,
            "val/mlm_loss": mlm_loss,
            "val/mlm_perplexity": torch.exp(mlm_loss),
            "val/nsp_loss": nsp_loss,
            "val/mlm_acc": s["mlm_correct"] / s["mlm_count"],
            "val/nsp_acc": s["nsp_correct"] / s["nsp_count"],
            # Accuracy of always predicting the split's most frequent masked token.
            "val/mlm_acc_baseline": counts.max() / s["mlm_count"],
        }
        self.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=False)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            # bf16 autocast has no loss scale: the gradients are already true gradients, but
            # Lightning refuses to clip whenever the optimizer could unscale inside its step
            # (torch's fused AdamW, our default), which would crash every bf16-mixed run without
            # DeepSpeed. Clip exactly as Lightning's base precision does.
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_start(self) -> None:
        if self.trainer.optimizers:
            repair_loaded_optimizer(self.trainer.optimizers[0], self._group_weight_decay)

    def configure_optimizers(self):
        optim_cfg = self.optim_cfg
        trainer = self._trainer
        if (
            optim_cfg.implementation == "fused"
            and trainer is not None
            and getattr(trainer.precision_plugin, "scaler", None) is not None
            and trainer.gradient_clip_val
        ):
            # fp16 loss scaling must unscale the gradients before clipping; torch's fused AdamW
            # unscales inside its step, which Lightning refuses to clip. Same math, batched kernels.
            optim_cfg = dataclasses.replace(optim_cfg, implementation="foreach")
        optimizer = build_optimizer(self.model, optim_cfg)
        self._group_weight_decay = [g["weight_decay"] for g in optimizer.param_groups]
        scheduler = build_scheduler(
            optimizer, self.schedule_cfg, self.max_steps, self.time_fraction
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
