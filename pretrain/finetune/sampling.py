"""The fine-tuning training order: random, with each batch drawn from examples of similar length.

Batches are padded to their longest member (`data.Collator`), so a random batch of short reviews
with one long one costs as much as a batch of long ones. Like `transformers.Trainer`'s
`group_by_length`: shuffle, cut the order into mega-batches of `megabatch_batches` batches (50,
fewer on small data so that there are at least four), sort each by length (longest first), and
put the mega-batch holding the longest example first so that a run that does not fit in memory
fails on its first step. The batches stay random at the scale of a mega-batch; their lengths, not
their labels, are grouped (labels that go with length do gather in batches: on small data the
mega-batches stay small for that reason).

With several ranks the order is built over global batches (`batch_size × num_replicas` examples of
similar length) and each rank takes its contiguous share of every global batch, so no rank waits on
a longer batch than the others'. As `DistributedSampler` does, the order is padded by repeating
its first examples until every rank has the same number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGABATCH_BATCHES = 50  # transformers' LengthGroupedSampler default (mega_batch_mult)


def megabatch_batches(examples: int, global_batch: int) -> int:
    """Batches per mega-batch: 50, or fewer so that the data makes at least four (transformers'
    rule), so that a small training set is not sorted as a whole into the same batches each epoch."""
    return max(1, min(MEGABATCH_BATCHES, examples // (4 * global_batch)))


class LengthGroupedSampler(Sampler[int]):
    """Indices of one rank's share, epoch by epoch (`set_epoch`, which Lightning calls)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size <= 0 or num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad batch_size={batch_size}/num_replicas={num_replicas}/rank={rank}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.total = math.ceil(len(self.lengths) / num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def global_order(self) -> list[int]:
        """All ranks' indices (`total` of them), in global batches of similar length."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        order += order[: self.total - len(order)]  # pad: every rank gets the same count
        step = self.batch_size * self.num_replicas
        size = step * megabatch_batches(len(self.lengths), step)
        megabatches = [
            sorted(order[i : i + size], key=lambda j: -self.lengths[j])  # stable: ties keep order
            for i in range(0, len(order), size)
        ]
        if megabatches:
            longest = max(range(len(megabatches)), key=lambda m: self.lengths[megabatches[m][0]])
            megabatches[0], megabatches[longest] = megabatches[longest], megabatches[0]
        return [i for megabatch in megabatches for i in megabatch]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        step = self.batch_size * self.num_replicas
        for start in range(0, len(order), step):
            # The last global batch may be short; it is a multiple of num_replicas (padding).
            batch = order[start : start + step]
            share = len(batch) // self.num_replicas
            yield from batch[self.rank * share : (self.rank + 1) * share]
