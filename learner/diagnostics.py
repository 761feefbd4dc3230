"""Per-step diagnostics of the learner, as pure functions of tensors.

``behaviour_mismatch`` measures how far the log-probs an engine recorded
while sampling are from the ones the learner computes for the same weights
(DESIGN.md section 5). The importance weights of FlowRL, GRPO and REINFORCE++
assume the two agree; a gap here means the off-policy correction corrects
the wrong thing. It returns sums, so ranks and micro-batches add up exactly
before the one division.

The rest say why a step did or did not move the policy: the gradient norm
before clipping and whether the clip bound, the zero-variance groups that
carry no reward signal, and the spread of FlowRL's terms (from first and
second moments, so they reduce exactly over micro-batches and ranks).
"""
from __future__ import annotations

import torch
from torch import Tensor


def behaviour_mismatch(logp: Tensor, behaviour_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum of |log π_learner − log π_behaviour|, sum of k3 KL(behaviour ‖ learner), token count)
    over the positions where ``mask`` is set.

    k3 = (r − 1) − log r with r = π_learner / π_behaviour: an unbiased, non-negative
    per-token estimate of KL(behaviour ‖ learner) for tokens sampled from the behaviour policy."""
    m = mask > 0
    log_r = torch.where(m, logp.float() - behaviour_logp.float(), torch.zeros((), device=logp.device))
    k3 = torch.expm1(log_r) - log_r
    return log_r.abs().sum(), torch.where(m, k3, torch.zeros((), device=logp.device)).sum(), m.sum().float()


def global_norm(tensors) -> float:
    """2-norm of all ``tensors`` together (what gradient clipping compares with its
    threshold); NaN when there are none, so a missing value is never read as 0."""
    norms = [t.detach().float().norm() for t in tensors if t is not None]
    return float(torch.stack(norms).norm()) if norms else float("nan")


def was_clipped(norm: float, clip: float) -> bool:
    """Whether a clip to ``clip`` (0: none) scaled a gradient of norm ``norm`` down."""
    return clip > 0 and norm > clip


def zero_variance_fraction(scores: Tensor, group_ids: Tensor) -> float:
    """Fraction of prompt groups whose scores are all equal. Their normalised reward is 0
    for every sample, so they teach the policy nothing (under FlowRL they only fit log Z)."""
    if scores.numel() == 0:
        return float("nan")
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1
    s = scores.detach().float()
    hi = torch.full((g,), -float("inf")).scatter_reduce(0, inv, s, reduce="amax")
    lo = torch.full((g,), float("inf")).scatter_reduce(0, inv, s, reduce="amin")
    return float((hi == lo).float().mean())


def std_from_moments(mean: float, sq_mean: float) -> float:
    """Population standard deviation from E[x] and E[x²]. Means of these two moments
    combine exactly over micro-batches and ranks, which means of standard deviations do not."""
    return max(sq_mean - mean * mean, 0.0) ** 0.5


# (mean key, E[x²] key, std key written) for the FlowRL terms of δ = log Z + L̄θ − L̄ref − β·r̂
FLOWRL_SPREADS = (("delta_mean", "delta_sq_mean", "delta_std"),
                  ("log_z_mean", "log_z_sq_mean", "log_z_std"),
                  ("reward_term_mean", "reward_term_sq_mean", "reward_term_std"))


def spreads(stats: dict) -> dict:
    """The standard deviations of whichever FlowRL terms ``stats`` holds moments of."""
    return {std: std_from_moments(stats[m], stats[sq]) for m, sq, std in FLOWRL_SPREADS
            if m in stats and sq in stats}
