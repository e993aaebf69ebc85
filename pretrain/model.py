"""BERT (Devlin et al., 2019) in plain PyTorch: the model for pretraining, export and fine-tuning.

Nothing here knows about Lightning, DeepSpeed, Hydra or precision: those are applied from outside.
Parameter names are our own; `hf_state_dict_key_map` maps each one onto exactly one parameter of
`transformers.BertForPreTraining`, so weights move both ways by renaming alone.

Shapes in comments: B batch, T sequence length, H hidden size, nh heads, hs head size (H / nh),
M number of masked positions in the batch, V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.linear import Linear, linear

# The fields that define the weights' shapes: what a checkpoint and a config must agree on.
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "norm_position",
)


@dataclass
class BertConfig:
    """Architecture of a BERT encoder with pretraining heads. The default sizes are bert-base's,
    which `model=bert-base` (bert-pretrain's default option, an empty YAML file) runs with."""

    vocab_size: int | None = None
    """Vocabulary size. None until filled from the tokenizer (the data manifest) at run time."""
    hidden_size: int = 768
    """Width H of every layer."""
    num_layers: int = 12
    """Number of encoder layers."""
    num_heads: int = 12
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward inner layer (4 × H in the paper)."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table covers."""
    type_vocab_size: int = 2
    """Number of segment ids (sentence A / B)."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings and on each residual branch."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT's value)."""
    initializer_range: float = 0.02
    """Std of the normal init of weights."""
    norm_position: str = "post"
    """"post": LayerNorm after each residual add, as in BERT (exports to Hugging Face). "pre":
    LayerNorm before each sublayer plus one after the last layer (GPT-2 / cramming style): trains
    stably at higher learning rates, but has no `transformers.BertModel` equivalent."""
    sparse_mlm: bool = True
    """Compute the MLM head only at masked positions (same loss, far less work: the vocabulary
    projection dominates small models). Off: logits for every position, as Hugging Face does."""
    fused_qkv: bool = True
    """Project queries, keys and values with one (H -> 3H) matmul over the concatenated weights
    instead of three (H -> H) ones. The parameters stay three (`query`, `key`, `value`), so
    checkpoints and Hugging Face export are unchanged; same results up to float summation order."""
    position_init: str = "normal"
    """Initial position table: "normal" (BERT's N(0, initializer_range)) or "sinusoidal"
    (Vaswani et al.'s sin/cos table, scaled to the same std). Same architecture and export; the
    sinusoids let attention tell positions apart from the first step, instead of after the table
    has been learned from noise."""
    fast_cpu_bf16_backward: bool = True
    """In bf16 on the CPU, multiply gradients by a column-major copy of each weight
    (`pretrain/linear.py`): same math, ~5× faster bf16 steps on CPUs that emulate bf16, where
    the stock input-gradient GEMM takes a ~10× slower kernel. No effect in fp32 or on GPUs."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of storing them
    (`torch.utils.checkpoint`): less activation memory for ~1/3 more compute. Training only."""

    def __post_init__(self) -> None:
        for name in ARCHITECTURE_FIELDS[1:-1]:  # vocab_size may be unset (None); not norm_position
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"model.vocab_size must be positive, got {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}"
            )
        if self.norm_position not in ("post", "pre"):
            raise ValueError(
                f"model.norm_position must be 'post' or 'pre', got {self.norm_position!r}"
            )
        if self.position_init not in ("normal", "sinusoidal"):
            raise ValueError(
                f"model.position_init must be 'normal' or 'sinusoidal', got {self.position_init!r}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


# Sizes of Google's BERT release (Turc et al., 2019 for the small ones); FFN = 4 × H, heads = H / 64.
PRESETS: dict[str, dict[str, int]] = {
    "bert-tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "bert-mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "bert-small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "bert-medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "bert-base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "bert-large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


def preset(name: str, **overrides) -> BertConfig:
    """A named size, e.g. `preset("bert-mini", vocab_size=8192)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return BertConfig(**{**PRESETS[name], **overrides})


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) table: sin on even dims, cos on odd, wavelengths 2π … 10000·2π."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


class Embeddings(nn.Module):
    """Token + segment + position embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        positions = torch.arange(T, device=input_ids.device)  # (T,), broadcast over the batch
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)
        return self.dropout(self.norm(x))  # (B, T, H)


class SelfAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (fused kernels on GPU).

    When its attention probabilities are asked for (`probs`), it takes an explicit softmax instead,
    masked as transformers' eager attention is: for inspection, not for training.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.fused_qkv = cfg.fused_qkv
        self.fast = fast = cfg.fast_cpu_bf16_backward
        self.query = Linear(cfg.hidden_size, cfg.hidden_size, fast)
        self.key = Linear(cfg.hidden_size, cfg.hidden_size, fast)
        self.value = Linear(cfg.hidden_size, cfg.hidden_size, fast)
        self.out = Linear(cfg.hidden_size, cfg.hidden_size, fast)
        self.attention_dropout = cfg.attention_dropout

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`probs`: a list this layer appends its attention probabilities (B, nh, T, T) to (before
        dropout); None (training, the default) keeps SDPA."""
        B, T, H = x.shape
        nh, hs = self.num_heads, H // self.num_heads
        if self.fused_qkv:
            # One (H -> 3H) matmul: (3H, H) weight built by concatenation (a 3H² copy, small
            # next to the B·T·3H² matmul), then (B, T, 3H) -> (3, B, nh, T, hs) views.
            w = torch.cat((self.query.weight, self.key.weight, self.value.weight))
            b = torch.cat((self.query.bias, self.key.bias, self.value.bias))
            q, k, v = (
                linear(x, w, b, self.fast).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)
            )
        else:
            # (B, T, H) -> (B, nh, T, hs)
            q, k, v = (
                proj(x).view(B, T, nh, hs).transpose(1, 2)
                for proj in (self.query, self.key, self.value)
            )
        dropout_p = self.attention_dropout if self.training else 0.0
        # attn_mask: (B, 1, 1, T) bool, True = may attend; None when nothing is padded.
        if probs is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        else:
            y = explicit_attention(q, k, v, attn_mask, dropout_p, probs)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, nh, T, hs) -> (B, T, H)
        return self.out(y)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    probs: list[torch.Tensor],
) -> torch.Tensor:
    """softmax(q kᵀ / √hs) v written out, appending the (B, nh, T, T) probabilities to `probs`.

    Padded keys get the dtype's lowest score rather than -inf, as in transformers, so their
    probability is 0 and no row is ever NaN."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.size(-1) ** -0.5  # (B, nh, T, T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    p = scores.softmax(dim=-1)
    probs.append(p)
    return torch.matmul(F.dropout(p, dropout_p) if dropout_p else p, v)  # (B, nh, T, hs)


class EncoderLayer(nn.Module):
    """Transformer layer. Post-LN (BERT): x = LN(x + Dropout(sublayer(x))).
    Pre-LN: x = x + Dropout(sublayer(LN(x))), the residual stream never normalized in between."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        fast = cfg.fast_cpu_bf16_backward
        self.attention = SelfAttention(cfg)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = Linear(cfg.hidden_size, cfg.intermediate_size, fast)
        self.ffn_out = Linear(cfg.intermediate_size, cfg.hidden_size, fast)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        probs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`probs`: see `SelfAttention.forward`."""
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), attn_mask, probs))
            return x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x)))))
        x = self.attention_norm(x + self.dropout(self.attention(x, attn_mask, probs)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))
        return x  # (B, T, H)


class BertModel(nn.Module):
    """The encoder: embeddings, layers and the tanh pooler over `[CLS]`."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError(
                "model.vocab_size is unset; it is filled from the tokenizer at run time"
            )
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        # Pre-LN leaves the residual stream unnormalized; one LayerNorm closes it (None for post-LN).
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            if cfg.norm_position == "pre"
            else None
        )
        self.pooler = Linear(cfg.hidden_size, cfg.hidden_size, cfg.fast_cpu_bf16_backward)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Returns (last hidden states (B, T, H), pooled `[CLS]` output (B, H)).

        `output_attentions=True` adds a third item: the attention probabilities of every layer, a
        tuple of num_layers (B, nh, T, T) tensors (rows: queries, columns: keys; padded keys 0),
        computed with an explicit softmax instead of SDPA (same outputs up to float rounding).
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        attn_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # (B, T) 1 = real token -> (B, 1, 1, T) broadcast over heads and query positions.
            # Skipped when nothing is padded so SDPA can take its mask-free fast path.
            attn_mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        if output_attentions:
            return self._forward_with_attentions(x, attn_mask)
        checkpointing = self.cfg.activation_checkpointing and self.training
        for layer in self.layers:
            if checkpointing:
                # Non-reentrant: works with inputs that need no grad and replays dropout's RNG.
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled

    def _forward_with_attentions(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The layers, pooler and final norm of `forward`, collecting attention probabilities (no
        activation checkpointing: its recomputation would collect them twice)."""
        probs: list[torch.Tensor] = []
        for layer in self.layers:
            x = layer(x, attn_mask, probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, torch.tanh(self.pooler(x[:, 0])), tuple(probs)


class MLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then the decoder tied to the word embeddings, plus a bias."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.fast = cfg.fast_cpu_bf16_backward
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, self.fast)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.word_embeddings = word_embeddings  # shared, not a copy: the decoder weight (V, H)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h)))
        return linear(h, self.word_embeddings.weight, self.bias, self.fast)  # (..., V)


class PretrainingOutput(NamedTuple):
    mlm_logits: torch.Tensor
    """(M, V) at masked positions when `mlm_labels` was given and `sparse_mlm` is on, else (B, T, V)."""
    nsp_logits: torch.Tensor
    """(B, 2): index 0 = B follows A, 1 = B is random."""
    hidden_states: torch.Tensor
    """(B, T, H) last encoder layer."""
    pooled: torch.Tensor
    """(B, H) pooler output."""


class BertForPreTraining(nn.Module):
    """BERT with its masked-language-model and next-sentence-prediction heads."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.mlm = MLMHead(cfg, self.bert.embeddings.word)
        self.nsp = Linear(cfg.hidden_size, 2, cfg.fast_cpu_bf16_backward)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit LayerNorms (BERT's init)."""
        std = self.cfg.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.mlm.bias)
        if self.cfg.position_init == "sinusoidal":
            table = sinusoidal_positions(self.cfg.max_position_embeddings, self.cfg.hidden_size)
            # sin/cos have std 1/√2: rescale to the other embeddings' std so neither dominates.
            self.bert.embeddings.position.weight.copy_(table * std * 2**0.5)
        # Hugging Face zeroes the padding row too; matching it keeps exported models identical.
        self.bert.embeddings.word.weight[0].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """`mlm_labels` (B, T), −100 where not masked: with `sparse_mlm`, selects the rows to score."""
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        if mlm_labels is not None and self.cfg.sparse_mlm:
            # Gather before the (H -> V) projection: (B, T, H) -> (M, H). Exact same logits at
            # those positions, ~1/7 of the work at 15% masking.
            mlm_logits = self.mlm(hidden[mlm_labels != -100])
        else:
            mlm_logits = self.mlm(hidden)
        return PretrainingOutput(mlm_logits, self.nsp(pooled), hidden, pooled)

    def attentions(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Attention probabilities of every layer: num_layers tensors (B, nh, T, T), each row a
        query position's distribution over the keys (`BertModel.forward(output_attentions=True)`).
        """
        return self.bert(input_ids, token_type_ids, attention_mask, output_attentions=True)[2]

    def compile_blocks(self) -> None:
        """`torch.compile` the embeddings, each encoder layer and the MLM head in place.

        Parameter names do not change (checkpoints and export are unaffected). What stays eager is
        what has data-dependent shapes or branches: the padding check and the gather of masked
        positions, whose count M changes every batch. The MLM head is therefore compiled with a
        dynamic first dimension from the start, so a new M never triggers a recompile; the
        encoder sees (B, T) shapes that only change with the batch's padded length.
        """
        self.bert.embeddings.compile()
        for layer in self.bert.layers:
            layer.compile()  # one graph reused by every layer: parameters are graph inputs
        self.mlm.compile(dynamic=True)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights count once
        if exclude_embeddings:
            emb = self.bert.embeddings
            n -= sum(
                p.numel() for m in (emb.word, emb.position, emb.token_type) for p in m.parameters()
            )
        return n


def pretraining_loss(
    out: PretrainingOutput, mlm_labels: torch.Tensor, next_sentence_label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, mlm, nsp) losses: mean cross-entropy over masked tokens plus over pairs."""
    labels = mlm_labels if out.mlm_logits.dim() == 3 else mlm_labels[mlm_labels != -100]
    mlm = F.cross_entropy(
        out.mlm_logits.reshape(-1, out.mlm_logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=-100,
    )
    nsp = F.cross_entropy(out.nsp_logits.float(), next_sentence_label)
    return mlm + nsp, mlm, nsp


def hf_state_dict_key_map(cfg: BertConfig) -> dict[str, str]:
    """Our parameter name -> `transformers.BertForPreTraining` parameter name (one to one).

    The tied decoder appears once on each side: our `mlm.word_embeddings.weight` is the same tensor
    as `bert.embeddings.word.weight`, and HF's `cls.predictions.decoder.{weight,bias}` are tied to
    the word embeddings and `cls.predictions.bias`.
    """
    if cfg.norm_position != "post":
        raise ValueError(
            f"model.norm_position={cfg.norm_position!r} has no Hugging Face BERT equivalent "
            "(transformers' BertModel is post-LN); only post-LN models export or import"
        )
    m = {
        "bert.embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type.weight": "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
        "bert.pooler.weight": "bert.pooler.dense.weight",
        "bert.pooler.bias": "bert.pooler.dense.bias",
        "mlm.dense.weight": "cls.predictions.transform.dense.weight",
        "mlm.dense.bias": "cls.predictions.transform.dense.bias",
        "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm.bias": "cls.predictions.bias",
        "nsp.weight": "cls.seq_relationship.weight",
        "nsp.bias": "cls.seq_relationship.bias",
    }
    per_layer = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(cfg.num_layers):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                m[f"bert.layers.{i}.{ours}.{p}"] = f"bert.encoder.layer.{i}.{theirs}.{p}"
    return m


def hf_config_kwargs(cfg: BertConfig) -> dict:
    """Keyword arguments for `transformers.BertConfig` describing the same architecture."""
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=0,
    )


def flops_per_token(cfg: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward; matmuls only), for MFU.

    Per layer: 4H² (QKV + out) + 2·H·I (FFN) multiply-adds, plus 2·T·H for the attention scores
    and their weighted sum. The MLM head runs on `masked_fraction` of tokens when sparse.
    """
    H, F_, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size or 0
    per_layer = 4 * H * H + 2 * H * F_ + 2 * seq_len * H
    head_tokens = masked_fraction if cfg.sparse_mlm else 1.0
    head = head_tokens * (H * H + H * V)
    return 3 * 2 * (cfg.num_layers * per_layer + head)  # 2 FLOPs per multiply-add


__all__ = [
    "PRESETS",
    "BertConfig",
    "BertForPreTraining",
    "BertModel",
    "PretrainingOutput",
    "flops_per_token",
    "hf_config_kwargs",
    "hf_state_dict_key_map",
    "preset",
    "pretraining_loss",
]
