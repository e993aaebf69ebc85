"""The fine-tuning model: the encoder plus a dropout + linear head (and, with `head=crf`, a
linear-chain CRF over the words: `crf.py`) as a LightningModule (loss, predictions, optimizer and
schedule), and the scoring of its predictions on a split."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import OptimConfig, ScheduleConfig
from pretrain.finetune.crf import CRF, SOFTMAX, LinearChainCRF, pack_words
from pretrain.finetune.data import SEQUENCE, EncodedDataset, word_predictions
from pretrain.finetune.metrics import entity_metrics, sequence_metrics
from pretrain.model import BertModel
from pretrain.optim import build_optimizer, build_scheduler


def evaluate(
    task_type: str,
    records: list[dict],
    labels: list[str],
    pred_ids: dict[int, Any],
    encoded: EncodedDataset,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-example predictions from `{dataset index: predicted ids}`."""
    if task_type == SEQUENCE:
        gold = [r["label"] for r in records]
        pred = [labels[pred_ids[i]] for i in range(len(records))]
        rows = [{**r, "prediction": p} for r, p in zip(records, pred, strict=True)]
        return sequence_metrics(gold, pred), rows
    o_id = labels.index("O")
    gold_tags, pred_tags = [], []
    for i, r in enumerate(records):
        words = word_predictions(pred_ids[i], encoded.items[i].first_piece, o_id)
        gold_tags.append(r["tags"])
        pred_tags.append([labels[w] for w in words])
    rows = [{**r, "predictions": p} for r, p in zip(records, pred_tags, strict=True)]
    return entity_metrics(gold_tags, pred_tags), rows


class FinetuneModule(L.LightningModule):
    """The pretrained encoder plus a dropout + linear classification head; with `head="crf"`
    (token tasks; `labels` then names the label ids) the linear head's scores at each word's first
    piece are the emissions of a linear-chain CRF."""

    def __init__(
        self,
        encoder: BertModel,
        task_type: str,
        num_labels: int,
        dropout: float,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        total_steps: int,
        evaluator,
        pooling: str = "cls",
        head: str = SOFTMAX,
        labels: list[str] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.task_type = task_type
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.cfg.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=encoder.cfg.initializer_range)
        nn.init.zeros_(self.head.bias)
        self.crf: LinearChainCRF | None = None
        if head == CRF:
            if task_type == SEQUENCE or labels is None or len(labels) != num_labels:
                # FinetuneConfig refuses head=crf for sequences; this guards direct callers.
                raise ValueError("head=crf needs a token task and its num_labels label names")
            self.crf = LinearChainCRF(labels)
        self.optim_cfg, self.schedule_cfg, self.total_steps = optim, schedule, total_steps
        self.evaluator = evaluator  # (split, {index: prediction}) -> metrics
        self._preds: dict[int, Any] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, pooled = self.encoder(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        )  # hidden (B, T, H), pooled (B, H)
        if self.task_type != SEQUENCE:
            return self.head(self.dropout(hidden))  # (B, T, labels)
        if self.pooling == "mean":  # average over the real tokens, [CLS] and [SEP] included
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))  # (B, labels)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy over the labelled positions (sequences, or each word's first piece); with
        a CRF, its negative log-likelihood per sentence, summed and divided by the batch's words
        (a per-word scale like the cross-entropy's, so the same learning rates apply)."""
        logits = self(batch)
        if self.crf is not None:
            words, mask, positions = pack_words(logits.float(), batch["word_starts"])
            tags = batch["labels"].gather(1, positions)  # (B, W): each word's gold label id
            return self.crf.nll(words, tags, mask).sum() / mask.sum().clamp(min=1)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch["labels"].reshape(-1),
            ignore_index=-100,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def predictions(self, batch: dict[str, torch.Tensor]) -> dict[int, Any]:
        """`{dataset index: label id}` (sequences) or `{index: label id per piece}` (tokens; with
        a CRF, the Viterbi path's label at each word's first piece, 0 on the other pieces)."""
        if self.crf is not None:
            words, mask, positions = pack_words(self(batch).float(), batch["word_starts"])
            path = self.crf.decode(words, mask)  # (B, W)
            pred = torch.zeros_like(batch["input_ids"]).scatter(1, positions, path).cpu()
        else:
            pred = self(batch).argmax(-1).cpu()
        lengths = batch["attention_mask"].sum(-1).cpu()
        out: dict[int, Any] = {}
        for row, index in enumerate(batch["index"].tolist()):
            if self.task_type == SEQUENCE:
                out[index] = int(pred[row])
            else:
                out[index] = pred[row, : int(lengths[row])].tolist()
        return out

    @torch.no_grad()
    def crf_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A CRF run's per-piece output (B, T, L + 1): at each word's first piece, the marginal
        probability of every label (forward-backward) and, last, the Viterbi path's label id;
        zeros on the other pieces."""
        emissions = self(batch).float()  # (B, T, L)
        words, mask, positions = pack_words(emissions, batch["word_starts"])
        marginals = self.crf.marginals(words, mask)  # (B, W, L)
        path = self.crf.decode(words, mask).to(marginals.dtype).unsqueeze(-1)  # (B, W, 1)
        per_word = torch.cat([marginals, path], dim=-1)  # (B, W, L + 1)
        out = emissions.new_zeros(*emissions.shape[:2], per_word.shape[-1])
        index = positions.unsqueeze(-1).expand_as(per_word)
        return out.scatter(1, index, torch.where(mask.unsqueeze(-1), per_word, 0.0))

    def _collect(self, batch: dict[str, torch.Tensor]) -> None:
        self._preds.update(self.predictions(batch))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def _finish(self, split: str) -> None:
        metrics = self.evaluator(split, self._preds)
        self._preds = {}
        self.last_metrics[split] = metrics
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, prog_bar=k in ("accuracy", "f1"))

    def on_validation_epoch_end(self) -> None:
        self._finish("dev")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self):
        # Pretraining's builder: AdamW or LAMB over encoder and head, no decay on biases and
        # LayerNorm weights.
        optimizer = build_optimizer(self, self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.schedule_cfg, self.total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
