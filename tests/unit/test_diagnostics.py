"""The trainer–engine mismatch statistics against hand-computed values."""
import math

import torch

from learner.diagnostics import (behaviour_mismatch, global_norm, spreads, std_from_moments, was_clipped,
                                 zero_variance_fraction)


def test_mismatch_sums_over_masked_tokens_only():
    learner = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, float("nan")]])
    engine = torch.tensor([[-1.0, -1.5, -9.0], [-1.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    abs_sum, k3_sum, n = behaviour_mismatch(learner, engine, mask)
    assert n.item() == 4
    assert math.isclose(abs_sum.item(), 0.0 + 0.5 + 0.5 + 0.0, rel_tol=1e-6)
    # k3 = e^d - 1 - d for d = log π_learner - log π_engine: d = -0.5 and +0.5 here
    expected = (math.exp(-0.5) + 0.5 - 1) + (math.exp(0.5) - 0.5 - 1)
    assert math.isclose(k3_sum.item(), expected, rel_tol=1e-6)


def test_identical_log_probs_give_zero():
    x = -torch.rand(3, 5)
    abs_sum, k3_sum, n = behaviour_mismatch(x, x.clone(), torch.ones(3, 5))
    assert abs_sum.item() == 0 and k3_sum.item() == 0 and n.item() == 15


def test_global_norm_is_the_norm_of_all_tensors_together():
    assert math.isclose(global_norm([torch.tensor([3.0]), None, torch.tensor([[4.0, 12.0]])]), 13.0, rel_tol=1e-6)
    assert math.isnan(global_norm([None]))  # no gradient at all is not a zero gradient


def test_was_clipped_compares_with_the_bound_and_zero_means_no_clip():
    assert was_clipped(1.5, 1.0) and not was_clipped(0.5, 1.0) and not was_clipped(1.0, 1.0)
    assert not was_clipped(1e6, 0.0)


def test_zero_variance_fraction_counts_constant_groups():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    groups = torch.tensor([7, 7, 3, 3, 9, 9, 1, 1, 1])  # ids need not be contiguous or sorted
    # groups 7 (1, 1), 9 (0, 0) and 1 (0.5 x 3) are constant; group 3 (0, 1) is not
    assert zero_variance_fraction(scores, groups) == 0.75
    assert zero_variance_fraction(torch.tensor([0.0, 1.0]), torch.tensor([0, 0])) == 0.0
    assert math.isnan(zero_variance_fraction(torch.tensor([]), torch.tensor([], dtype=torch.long)))


def test_spreads_from_moments_match_the_direct_std_over_micro_batches():
    x = torch.tensor([-3.0, 1.0, 2.0, 10.0, 0.5])
    # two micro-batches of sizes 2 and 3, their means weighted by size as Trainer.step does
    parts = (x[:2], x[2:])
    mean = sum(len(p) / 5 * p.mean().item() for p in parts)
    sq = sum(len(p) / 5 * p.square().mean().item() for p in parts)
    assert math.isclose(std_from_moments(mean, sq), x.std(unbiased=False).item(), rel_tol=1e-6)
    assert std_from_moments(2.0, 4.0 - 1e-12) == 0.0  # rounding below zero variance is not NaN
    out = spreads({"delta_mean": 1.0, "delta_sq_mean": 5.0, "log_z_mean": 2.0, "log_z_sq_mean": 4.0,
                   "reward_term_mean": 0.0})  # no second moment: no std
    assert out == {"delta_std": 2.0, "log_z_std": 0.0}
