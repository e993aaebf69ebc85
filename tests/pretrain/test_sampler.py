"""The step-indexed training stream: coverage, sharding across ranks, and resume."""

from __future__ import annotations

from itertools import islice

from pretrain.data import TrainStreamSampler, ValidationSampler


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = TrainStreamSampler(num_samples=10, global_batch_size=5, rank=0, world_size=1, seed=3)
    keys = take(s, 30)
    for e in range(3):
        epoch_keys = keys[e * 10 : (e + 1) * 10]
        assert {k[0] for k in epoch_keys} == {e}
        assert sorted(k[1] for k in epoch_keys) == list(range(10))
    assert [k[1] for k in keys[:10]] != [k[1] for k in keys[10:20]]


def test_ranks_split_each_global_batch_and_match_one_process():
    G, steps = 8, 5
    single = take(TrainStreamSampler(13, G, 0, 1, seed=1), G * steps)
    per_rank = [take(TrainStreamSampler(13, G, r, 2, seed=1), G // 2 * steps) for r in range(2)]
    for step in range(steps):
        rebuilt = [k for r in range(2) for k in per_rank[r][step * 4 : (step + 1) * 4]]
        assert rebuilt == single[step * G : (step + 1) * G]


def test_resume_at_step_continues_with_the_next_unseen_sample():
    full = take(TrainStreamSampler(7, 4, 1, 2, seed=9), 2 * 6)
    resumed = take(TrainStreamSampler(7, 4, 1, 2, seed=9, start_step=3), 2 * 3)
    assert resumed == full[2 * 3 :]


def test_validation_shares_cover_the_split_once():
    shares = [list(ValidationSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for share in shares for _, i in share) == list(range(11))
    assert all(e == 0 for share in shares for e, _ in share)
    assert len(ValidationSampler(11, 0, 1)) == 11
