"""Binds the config's ``algorithm`` to the pure loss functions in losses.py, so
that the training loop calls ``prepare`` once per step (whole batch, before
any update) and ``loss`` per micro-batch without knowing which objective runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from learner import losses
from learner.config import AlgoConfig


@dataclass(frozen=True)
class Objective:
    needs_ref: bool
    """Whether ``loss`` / ``prepare`` use the reference model's log-probs."""
    uses_log_z: bool
    prepare: Callable[..., torch.Tensor]
    """(scores[B], group_ids[B], mask, old_logp, ref_logp, across) -> per-sequence or per-token
    target, for this rank's share of the batch; ``across`` (losses.Across) reduces over the ranks
    for statistics of the whole batch (groups are never split, so group statistics need none)."""
    loss: Callable[..., tuple[torch.Tensor, dict]]
    """(logp, old_logp, ref_logp, mask, log_z, target) -> (loss, stats)."""
    mean_over: str
    """What ``loss`` (and each stat) is a mean over within a micro-batch: "sequence" or
    "token". The trainer weighs each micro-batch by its share of those in the whole batch,
    all ranks, so the step's loss is that mean over the batch however it is cut."""


def build_objective(cfg: AlgoConfig) -> Objective:
    def group_adv(scores, group_ids, mask, old_logp, ref_logp, across):
        return losses.group_normalize(scores, group_ids)

    if cfg.algorithm == "flowrl":
        def flowrl(logp, old_logp, ref_logp, mask, log_z, target):
            return losses.flowrl_loss(logp, old_logp, ref_logp, mask, log_z, target, beta=cfg.beta,
                                      is_clip=cfg.is_clip, length_norm=cfg.length_norm, use_ref=cfg.use_ref)
        return Objective(cfg.use_ref, True, group_adv, flowrl, "sequence")
    if cfg.algorithm == "grpo":
        def grpo(logp, old_logp, ref_logp, mask, log_z, target):
            return losses.grpo_loss(logp, old_logp, mask, target, clip_eps=cfg.clip_eps,
                                    ref_logp=ref_logp, kl_coef=cfg.kl_coef)
        return Objective(cfg.kl_coef > 0, False, group_adv, grpo, "token")
    if cfg.algorithm == "reinforce_pp":
        def rpp_adv(scores, group_ids, mask, old_logp, ref_logp, across):
            ref = ref_logp if ref_logp is not None else old_logp  # kl_coef == 0: the KL term vanishes
            return losses.reinforce_pp_advantages(scores, mask, old_logp, ref, kl_coef=cfg.kl_coef, across=across)

        def rpp(logp, old_logp, ref_logp, mask, log_z, target):
            return losses.reinforce_pp_loss(logp, old_logp, mask, target, clip_eps=cfg.clip_eps)
        return Objective(cfg.kl_coef > 0, False, rpp_adv, rpp, "token")
    raise ValueError(f"algo.algorithm: unknown {cfg.algorithm!r}")
