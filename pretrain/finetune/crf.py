"""A linear-chain CRF head for token classification (`head=crf`): per-word label scores from the
encoder's linear head, learned label-to-label transitions and start/end scores, trained by the
negative log-likelihood of the gold path (forward algorithm) and decoded by Viterbi; forward-backward
gives each word's label marginals. Plain PyTorch, vectorised over the batch.

BIO is built in: `I-X` may follow only `B-X` or `I-X` and may not start a sentence. Those
transitions score −inf, so the log-partition, the decoded paths and the marginals all range over
valid tag sequences only. A gold sequence that breaks the rule (an `I-X` after `O` or another type,
which the entity metrics read as the start of an X entity, as conlleval does) is trained as the
valid sequence with the same entities: that `I-X` becomes `B-X`.

The CRF runs over words, not WordPieces: the score rows of each word's first piece (where the
softmax head's label sits; `word_starts` marks them) are packed, in order, into a word sequence
(`pack_words`), with a mask for the shorter sentences of the batch.

Shapes: B sentences, T pieces, W words (the batch's most), L labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pretrain.errors import UserError

SOFTMAX = "softmax"
CRF = "crf"
HEADS = (SOFTMAX, CRF)
"""`head=`: `softmax` (each word's label on its own, cross-entropy) or `crf` (this module)."""


def bio_constraints(labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`allowed` (L, L) bool, `allowed[i, j]`: label j may follow label i; and `may_start` (L,)
    bool: label j may open a sentence. Only `I-X` is restricted: after `B-X` or `I-X`, never
    first. Every `I-X` needs its `B-X` in the label set, else no valid path could reach it."""
    index = {label: i for i, label in enumerate(labels)}
    allowed = torch.ones(len(labels), len(labels), dtype=torch.bool)
    may_start = torch.ones(len(labels), dtype=torch.bool)
    for j, label in enumerate(labels):
        if not label.startswith("I-"):
            continue
        kind = label[2:]
        if f"B-{kind}" not in index:
            raise UserError(
                f"head=crf: label {label!r} has no B-{kind} in the label set {list(labels)}, so "
                f"the BIO rule (I-{kind} only after B-{kind} or I-{kind}) leaves no way to reach "
                f"it; add B-{kind} to task.labels, or use head=softmax"
            )
        may_start[j] = False
        allowed[:, j] = False
        allowed[index[f"B-{kind}"], j] = True
        allowed[j, j] = True
    return allowed, may_start


def pack_words(
    scores: torch.Tensor, word_starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-piece rows (B, T, L) -> per-word rows (B, W, L) in word order, the word mask (B, W)
    and the piece position of each word (B, W; past a sentence's last word: other positions,
    masked). `word_starts` (B, T) bool marks each word's first piece."""
    counts = word_starts.sum(1)  # (B,)
    width = max(1, int(counts.max())) if counts.numel() else 1
    # A stable sort on "not a word start" brings the word starts to the front in their order.
    order = torch.argsort((~word_starts).to(torch.int8), dim=1, stable=True)  # (B, T)
    positions = order[:, :width]  # (B, W)
    mask = torch.arange(width, device=scores.device)[None, :] < counts[:, None]  # (B, W)
    words = scores.gather(1, positions.unsqueeze(-1).expand(-1, -1, scores.shape[-1]))
    return words, mask, positions


class LinearChainCRF(nn.Module):
    """Transitions, start and end scores over `labels`, with the BIO rule (module docstring)."""

    def __init__(self, labels: Sequence[str]):
        super().__init__()
        allowed, may_start = bio_constraints(labels)
        n = len(labels)
        # Zero scores: before training, the CRF is the softmax head restricted to valid BIO paths.
        self.transitions = nn.Parameter(torch.zeros(n, n))  # (L from, L to)
        self.start = nn.Parameter(torch.zeros(n))  # (L,)
        self.end = nn.Parameter(torch.zeros(n))  # (L,)
        # Derived from the labels, so not saved: a run's labels.json rebuilds them.
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("may_start", may_start, persistent=False)
        # For repairing gold paths: each label's `B-` form (itself for `O` and `B-`).
        begin = [
            labels.index(f"B-{x[2:]}") if x.startswith("I-") else i for i, x in enumerate(labels)
        ]
        self.register_buffer("begin_of", torch.tensor(begin), persistent=False)

    def _scores(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Transitions (L, L) and start scores (L,) with the forbidden ones at −inf."""
        ninf = torch.tensor(float("-inf"), dtype=dtype, device=self.transitions.device)
        trans = torch.where(self.allowed, self.transitions.to(dtype), ninf)
        start = torch.where(self.may_start, self.start.to(dtype), ninf)
        return trans, start

    def _alphas(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Forward algorithm: for each word t, (B, L) log-sums of the scores of every valid path
        over words 0..t ending in each label (frozen past a sentence's end)."""
        trans, start = self._scores(emissions.dtype)
        alpha = start + emissions[:, 0]  # (B, L)
        alphas = [alpha]
        for t in range(1, emissions.shape[1]):
            # (B, L from, 1) + (L from, L to) -> log-sum over `from` -> (B, L to)
            step = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], step, alpha)
            alphas.append(alpha)
        return alphas

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z (B,) of word scores (B, W, L) under the word mask (B, W); 0 for no words."""
        alpha = self._alphas(emissions, mask)[-1]
        log_z = torch.logsumexp(alpha + self.end.to(emissions.dtype), dim=1)
        return torch.where(mask.any(1), log_z, torch.zeros_like(log_z))

    def valid_tags(self, tags: torch.Tensor) -> torch.Tensor:
        """Gold tags (B, W) with each `I-X` that breaks the BIO rule turned into `B-X` (the same
        entities). Changing an `I-X` into `B-X` never changes whether the next tag may follow, so
        one pass over the original tags suffices."""
        first = ~self.may_start[tags[:, :1]]  # (B, 1)
        later = ~self.allowed[tags[:, :-1], tags[:, 1:]]  # (B, W-1)
        broken = torch.cat([first, later], dim=1)  # (B, W)
        return torch.where(broken, self.begin_of[tags], tags)

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor):
        """Score (B,) of the label path `tags` (B, W), valid under the BIO rule."""
        trans, start = self._scores(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # (B, W)
        steps = torch.cat([start[tags[:, 0]].unsqueeze(1), trans[tags[:, :-1], tags[:, 1:]]], 1)
        per_word = torch.where(mask, emit + steps, torch.zeros_like(emit))  # (B, W)
        last = tags.gather(1, (mask.sum(1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        end = torch.where(mask.any(1), self.end.to(emissions.dtype)[last], 0.0)
        return per_word.sum(1) + end

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (B,) of gold `tags` (B, W; any value where masked)."""
        tags = self.valid_tags(torch.where(mask, tags, torch.zeros_like(tags)))
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Viterbi: the best valid label path (B, W) (0 past a sentence's end)."""
        trans, start = self._scores(emissions.dtype)
        score = start + emissions[:, 0]  # (B, L)
        back = []  # back[t - 1] (B, L to): the best previous label for each label at word t
        for t in range(1, emissions.shape[1]):
            best, previous = (score.unsqueeze(2) + trans).max(dim=1)  # (B, L to) each
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
            back.append(previous)
        label = (score + self.end.to(emissions.dtype)).argmax(1)  # (B,): at each last word
        path = [label]
        # Past a sentence's end the label is carried unchanged down to its last word.
        for t in range(emissions.shape[1] - 1, 0, -1):
            before = back[t - 1].gather(1, label.unsqueeze(1)).squeeze(1)
            label = torch.where(mask[:, t], before, label)
            path.append(label)
        path = torch.stack(path[::-1], dim=1)  # (B, W)
        return torch.where(mask, path, torch.zeros_like(path))

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward-backward: P(word t has label j | sentence) (B, W, L); 0 past a sentence's end."""
        alphas = self._alphas(emissions, mask)
        trans, _ = self._scores(emissions.dtype)
        end = self.end.to(emissions.dtype).expand_as(alphas[0])  # (B, L)
        beta = end
        betas = [beta]  # beta_t (B, L): log-sum of the scores of words t+1.. after label j at t
        for t in range(emissions.shape[1] - 2, -1, -1):
            # (L from, L to) + (B, 1, L to) -> log-sum over `to` -> (B, L from)
            step = torch.logsumexp(trans + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask[:, t + 1, None], step, end)
            betas.append(beta)
        alpha = torch.stack(alphas, dim=1)  # (B, W, L)
        beta = torch.stack(betas[::-1], dim=1)  # (B, W, L)
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)  # (B,)
        probs = (alpha + beta - log_z[:, None, None]).exp()
        return torch.where(mask.unsqueeze(-1), probs, torch.zeros_like(probs))
