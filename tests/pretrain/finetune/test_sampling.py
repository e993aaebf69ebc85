"""The length-grouped training order: every example once per epoch, batches of similar length,
the longest batch first, a new order each epoch, and equal, length-matched shares across ranks."""

from __future__ import annotations

import random

import pytest

from pretrain.finetune.sampling import LengthGroupedSampler, megabatch_batches


def lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def padded_slots(lens: list[int], order: list[int], size: int) -> int:
    """Token slots the collator pads to: each batch costs its longest member × its size."""
    return sum(max(lens[i] for i in b) * len(b) for b in batches(order, size))


def test_one_rank_is_a_permutation_in_length_grouped_batches():
    lens = lengths(1000)
    sampler = LengthGroupedSampler(lens, batch_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and len(sampler) == 1000
    assert lens[order[0]] == max(lens)  # the largest batch first: out-of-memory on step one
    random_order = list(range(1000))
    random.Random(1).shuffle(random_order)
    # Random batches of 8 from lengths 5-120 pad to nearly 2× their tokens; grouped ones hardly.
    assert padded_slots(lens, order, 8) < 0.6 * padded_slots(lens, random_order, 8)
    # Within a mega-batch the lengths fall; the mega-batches themselves are random.
    first = order[: 8 * megabatch_batches(1000, 8)]
    assert [lens[i] for i in first] == sorted((lens[i] for i in first), reverse=True)


def test_order_is_seeded_and_changes_with_the_epoch():
    lens = lengths(500)
    a, b = LengthGroupedSampler(lens, 4, seed=1), LengthGroupedSampler(lens, 4, seed=1)
    assert list(a) == list(b)  # the run and each lr=auto trial see the same order
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0 and sorted(list(a)) == sorted(epoch0)
    assert list(LengthGroupedSampler(lens, 4, seed=2)) != epoch0


@pytest.mark.parametrize("n", [1000, 997])
def test_ranks_get_equal_contiguous_shares_of_each_global_batch(n):
    lens = lengths(n, seed=5)
    world, size = 4, 8
    samplers = [LengthGroupedSampler(lens, size, seed=0, num_replicas=world, rank=r)
                for r in range(world)]  # fmt: skip
    shares = [list(s) for s in samplers]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(samplers[0])
    assert sum(len(s) for s in shares) == samplers[0].total == -(-n // world) * world
    covered = {i for s in shares for i in s}
    assert covered == set(range(n))  # padding repeats examples, drops none
    # Step k on every rank is a slice of the same global batch, so their lengths are alike.
    glob = samplers[0].global_order()
    per_step = list(zip(*(batches(s, size) for s in shares), strict=True))
    for k, step in enumerate(per_step[:-1]):
        assert [i for b in step for i in b] == glob[k * size * world : (k + 1) * size * world]
    tail = [i for b in per_step[-1] for i in b]
    assert tail == glob[(len(per_step) - 1) * size * world :]


def test_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank=2"):
        LengthGroupedSampler([1, 2, 3], 2, seed=0, num_replicas=2, rank=2)


def test_small_data_is_cut_into_at_least_four_megabatches():
    assert megabatch_batches(10_202, 32) == 50  # Rotten Tomatoes: transformers' 50
    assert megabatch_batches(256, 16) == 4  # 4 mega-batches, not the whole set sorted at once
    assert megabatch_batches(10, 32) == 1
