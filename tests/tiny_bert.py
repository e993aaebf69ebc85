"""A bert-tiny config and a seeded MLM + NSP batch for model-level tests (no data, no tokenizer)."""

from __future__ import annotations

import torch

from pretrain.model import BertConfig, preset

V = 300
"""Vocabulary size of `tiny` and the token ids of `batch`."""


def tiny(**overrides) -> BertConfig:
    """bert-tiny with a 300-token vocabulary and 64 positions."""
    return preset("bert-tiny", vocab_size=V, max_position_embeddings=64, **overrides)


def batch(B: int = 3, T: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with one padded row, two segments, ~30% MLM labels and NSP labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.long)
    attention[1, 11:] = 0  # one padded row
    ids[attention == 0] = 0
    token_types = torch.zeros(B, T, dtype=torch.long)
    token_types[:, T // 2 :] = 1
    labels = torch.full((B, T), -100)
    chosen = (torch.rand(B, T, generator=g) < 0.3) & (attention == 1)
    chosen[:, 1] = True
    labels[chosen] = ids[chosen]
    return dict(
        input_ids=ids,
        token_type_ids=token_types,
        attention_mask=attention,
        labels=labels,
        next_sentence_label=torch.tensor([0, 1, 0])[:B],
    )
