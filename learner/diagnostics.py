"""Per-step diagnostics of the learner, as pure functions of tensors.

``behaviour_mismatch`` measures how far the log-probs an engine recorded
while sampling are from the ones the learner computes for the same weights
(DESIGN.md section 5). The importance weights of FlowRL, GRPO and REINFORCE++
assume the two agree; a gap here means the off-policy correction corrects
the wrong thing. It returns sums, so ranks and micro-batches add up exactly
before the one division.
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
