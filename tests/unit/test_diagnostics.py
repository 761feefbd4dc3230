"""The trainer–engine mismatch statistics against hand-computed values."""
import math

import torch

from learner.diagnostics import behaviour_mismatch


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
