"""Loss functions for the learner: FlowRL and the GRPO / REINFORCE++ baselines.

Everything here is a pure function of tensors: no module state, no config
objects, no distributed calls (statistics over ranks take an ``Across`` of
reductions as an argument), no optimizer. The trainer (``learner/trainer``)
computes per-token log-probs for a batch and then calls exactly one of

* ``flowrl_loss(logp, old_logp, ref_logp, mask, log_z, reward, ...)`` with
  ``reward = group_normalize(scores, group_ids)`` and ``log_z`` from the log Z
  head (DESIGN.md section 5; the default objective);
* ``grpo_loss(logp, old_logp, mask, advantages, ...)`` with
  ``advantages = group_normalize(scores, group_ids)``;
* ``reinforce_pp_loss(logp, old_logp, mask, advantages, ...)`` with
  ``advantages = reinforce_pp_advantages(scores, mask, old_logp, ref_logp,
  kl_coef=...)`` computed once per batch, before any update, over the whole
  (global) batch;

selected by the learner config's algorithm name (``"flowrl"``, ``"grpo"``,
``"reinforce_pp"``). Each returns ``(loss, stats)``: a scalar tensor to
backpropagate and a dict of Python floats for the metrics exporter. The
training loop needs nothing else from the choice, so it does not know which
objective it runs.

Shapes: ``B`` sequences, ``T`` response positions (left-aligned or not, any
layout works); ``mask`` is 1.0 on response tokens and 0.0 on padding.
Positions where ``mask == 0`` never influence a value or a gradient, even if
the log-prob there is ``-inf`` or NaN (selection with ``torch.where``, not
multiplication). Masked means divide by ``mask.sum().clamp(min=1)``.

Numerics: importance ratios are clipped in log space before ``exp``, so a
summed log-ratio over thousands of tokens never overflows; per-token PPO
ratios and the k3 KL are computed from clamped log-ratios.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "group_normalize",
    "flowrl_loss",
    "grpo_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_loss",
    "Across",
    "LOCAL",
]

# Per-token log-ratios are clamped to this range before exp (PPO ratio, k3 KL).
# exp(20) ~ 4.9e8: far outside any clip range, and finite in float32/bf16.
_TOKEN_LOG_RATIO_MAX = 20.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(like.shape)}")
    return mask > 0 if mask.dtype != torch.bool else mask


def _masked_sum(x: Tensor, m: Tensor, dim=None) -> Tensor:
    z = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return z.sum() if dim is None else z.sum(dim)


def _masked_mean(x: Tensor, m: Tensor, dim=None) -> Tensor:
    n = m.sum() if dim is None else m.sum(dim)
    return _masked_sum(x, m, dim) / n.clamp(min=1).to(x.dtype)


def _check_2d(name: str, x: Tensor, shape) -> None:
    if x.dim() != 2 or tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def _check_1d(name: str, x: Tensor, b: int) -> None:
    if tuple(x.shape) != (b,):
        raise ValueError(f"{name} must have shape ({b},), got {tuple(x.shape)}")


def _f(x: Tensor) -> float:
    return float(x.detach().item())


# --------------------------------------------------------------------------
# group normalisation
# --------------------------------------------------------------------------


def group_normalize(scores: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-group z-score: (s - mean_g) / (std_g + eps), std unbiased.

    ``scores`` [B] (any numeric dtype; integer/bool become float32),
    ``group_ids`` [B] integer ids of the prompt group each sample belongs to
    (any values, need not be contiguous or sorted). A group whose scores are
    all equal, including a group of size 1, gets exactly 0. Vectorised: one
    ``unique`` plus scatter reductions, no loop over groups. The result carries
    no gradient (scores are data).
    """
    if scores.dim() != 1 or group_ids.shape != scores.shape:
        raise ValueError(
            f"scores and group_ids must both be [B], got {tuple(scores.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    s = scores.detach()
    if not torch.is_floating_point(s):
        s = s.to(torch.float32)
    if s.numel() == 0:
        return s.clone()
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max().item()) + 1
    count = torch.bincount(inv, minlength=g).to(s.dtype)
    total = torch.zeros(g, dtype=s.dtype, device=s.device).index_add_(0, inv, s)
    mean = total / count
    dev = s - mean[inv]
    # two-pass variance (stable), unbiased; size-1 groups get var 0
    sq = torch.zeros(g, dtype=s.dtype, device=s.device).index_add_(0, inv, dev * dev)
    var = sq / (count - 1).clamp(min=1)
    std = var.sqrt()
    out = dev / (std[inv] + eps)
    # Exact zero for constant groups: sum/n can differ from the common value by
    # rounding (0.1+0.1+0.1)/3 != 0.1, so decide constancy on max == min.
    gmax = torch.full((g,), -math.inf, dtype=s.dtype, device=s.device).scatter_reduce(
        0, inv, s, reduce="amax", include_self=True
    )
    gmin = torch.full((g,), math.inf, dtype=s.dtype, device=s.device).scatter_reduce(
        0, inv, s, reduce="amin", include_self=True
    )
    const = (gmax == gmin)[inv]
    return torch.where(const, torch.zeros((), dtype=s.dtype, device=s.device), out)


# --------------------------------------------------------------------------
# FlowRL
# --------------------------------------------------------------------------


def _log_bounds(is_clip) -> tuple[float, float]:
    """(log low, log high) for the importance-weight clip; -inf/+inf for None."""
    low, high = is_clip
    for name, v in (("low", low), ("high", high)):
        if v is not None and not v > 0:
            raise ValueError(f"is_clip {name} bound must be > 0, got {v}")
    lo = -math.inf if low is None else math.log(low)
    hi = math.inf if high is None else math.log(high)
    if lo > hi:
        raise ValueError(f"is_clip low {low} > high {high}")
    return lo, hi


def flowrl_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Optional[Tensor],
    mask: Tensor,
    log_z: Tensor,
    reward: Tensor,
    *,
    beta: float = 15.0,
    is_clip: Optional[tuple[Optional[float], Optional[float]]] = (0.8, 1.2),
    length_norm: bool = True,
    use_ref: bool = True,
) -> tuple[Tensor, dict]:
    """FlowRL trajectory-balance loss (DESIGN.md section 5).

    delta_i = log_z_i + Lθ_i - Lref_i - beta * reward_i, where Lθ / Lref are
    the masked means of ``logp`` / ``ref_logp`` over the response tokens
    (masked sums when ``length_norm=False``; ``use_ref=False`` drops Lref).
    w_i = exp(sum_t mask*(logp - old_logp)), detached and clipped to
    ``is_clip = (low, high)`` (either may be None; ``is_clip=None`` means
    w = 1). The clip is applied to the summed log-ratio, before exp, so very
    long sequences stay finite. Loss = mean_i w_i * delta_i**2.

    Gradients flow into ``logp`` and ``log_z`` only; ``old_logp``,
    ``ref_logp``, ``reward`` and ``w`` are treated as constants.

    With a bound set to None the log-weight is still held inside
    +-log(finfo(dtype).max)/4 (about +-22 in float32) so that w*delta^2
    cannot overflow to inf; that guard never binds for sane inputs and is not
    counted in ``is_clip_frac``.

    Returns (loss, stats); stats are floats: is_weight_mean, is_weight_max,
    is_clip_frac (fraction of sequences whose log-weight lay outside the
    bounds), delta_mean, delta_sq_mean, log_z_mean, log_z_sq_mean,
    reward_term_mean and reward_term_sq_mean (of beta * reward), logp_mean (mean of Lθ),
    ref_logp_mean (mean of Lref, 0 when use_ref=False), log_ratio_mean (mean
    summed log-ratio before clipping), reward_mean, response_len_mean.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    B = logp.shape[0]
    if B == 0:
        raise ValueError("flowrl_loss needs at least one sequence")
    _check_2d("old_logp", old_logp, logp.shape)
    m = _bool_mask(mask, logp)
    if log_z.dim() == 2 and log_z.shape[1] == 1:  # tolerate [B, 1] head output
        log_z = log_z.squeeze(1)
    _check_1d("log_z", log_z, B)
    _check_1d("reward", reward, B)
    dt = logp.dtype

    agg = _masked_mean if length_norm else _masked_sum
    l_theta = agg(logp, m, 1)
    if use_ref:
        if ref_logp is None:
            raise ValueError("ref_logp is required when use_ref=True")
        _check_2d("ref_logp", ref_logp, logp.shape)
        l_ref = agg(ref_logp.detach().to(dt), m, 1)
    else:
        l_ref = torch.zeros(B, dtype=dt, device=logp.device)

    r = reward.detach().to(dt)
    delta = log_z.to(dt) + l_theta - l_ref - beta * r

    with torch.no_grad():
        log_ratio = _masked_sum(logp.detach() - old_logp.detach().to(dt), m, 1)
        if is_clip is None:
            w = torch.ones(B, dtype=dt, device=logp.device)
            clip_frac = torch.zeros((), dtype=dt, device=logp.device)
        else:
            lo, hi = _log_bounds(is_clip)
            outside = (log_ratio < lo) | (log_ratio > hi)
            clip_frac = outside.to(dt).mean()
            safety = math.log(torch.finfo(dt).max) / 4.0
            hi_eff = min(hi, safety)
            lo_eff = max(lo, -safety)
            w = torch.exp(log_ratio.clamp(min=lo_eff, max=hi_eff))

    loss = (w * delta.square()).mean()

    with torch.no_grad():
        stats = {
            "is_weight_mean": _f(w.mean()),
            "is_weight_max": _f(w.max()),
            "is_clip_frac": _f(clip_frac),
            "delta_mean": _f(delta.mean()),
            "delta_sq_mean": _f(delta.square().mean()),
            "log_z_mean": _f(log_z.mean()),
            "log_z_sq_mean": _f(log_z.square().mean()),
            # β·r̂, the term log Z and the log-ratio must balance: with δ² of 100+ it
            # is what dominates the loss and the gradient norm
            "reward_term_mean": _f((beta * r).mean()),
            "reward_term_sq_mean": _f((beta * r).square().mean()),
            "logp_mean": _f(l_theta.mean()),
            "ref_logp_mean": _f(l_ref.mean()),
            "log_ratio_mean": _f(log_ratio.mean()),
            "reward_mean": _f(r.mean()),
            "response_len_mean": _f(m.sum(1).to(dt).mean()),
        }
    return loss, stats


# --------------------------------------------------------------------------
# PPO-clip surrogate shared by GRPO and REINFORCE++
# --------------------------------------------------------------------------


ClipEps = Union[float, Sequence[float]]


def _clip_range(clip_eps: ClipEps) -> tuple[float, float]:
    if isinstance(clip_eps, (int, float)):
        lo_eps = hi_eps = float(clip_eps)
    else:
        lo_eps, hi_eps = (float(x) for x in clip_eps)
    if not (0.0 <= lo_eps < 1.0) or hi_eps < 0.0:
        raise ValueError(f"bad clip_eps {clip_eps!r}")
    return 1.0 - lo_eps, 1.0 + hi_eps


def _clipped_surrogate(
    logp: Tensor, old_logp: Tensor, m: Tensor, adv: Tensor, clip_eps: ClipEps
) -> tuple[Tensor, dict, Tensor]:
    """Token-level -min(ρA, clip(ρ)A), token-mean over all masked tokens.

    Returns (loss, stats, log_ratio); ``adv`` is [B, T] and constant.
    """
    lo, hi = _clip_range(clip_eps)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # masked positions: log-ratio 0 (and never used), so NaN/-inf there is harmless
    log_ratio = torch.where(m, logp - old_logp.detach().to(logp.dtype), zero)
    log_ratio = log_ratio.clamp(-_TOKEN_LOG_RATIO_MAX, _TOKEN_LOG_RATIO_MAX)
    ratio = torch.exp(log_ratio)
    a = torch.where(m, adv.detach().to(logp.dtype), zero)
    pg1 = -a * ratio
    pg2 = -a * ratio.clamp(lo, hi)
    pg = torch.maximum(pg1, pg2)
    loss = _masked_mean(pg, m)
    with torch.no_grad():
        stats = {
            "clip_frac": _f(_masked_mean((pg2 > pg1).to(logp.dtype), m)),
            "ratio_mean": _f(_masked_mean(ratio, m)),
            "ratio_max": _f(torch.where(m, ratio, zero).max()) if m.any() else 1.0,
            "pg_loss": _f(loss),
            "n_tokens": _f(m.sum()),
        }
    return loss, stats, log_ratio


def _k3(logp: Tensor, ref_logp: Tensor, m: Tensor) -> Tensor:
    """Token-mean k3 KL estimate of KL(π || π_ref), samples from π.

    k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's estimator),
    log-ratio clamped to +-20 so exp cannot overflow.
    """
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    lr = torch.where(m, ref_logp.detach().to(logp.dtype) - logp, zero)
    lr = lr.clamp(-_TOKEN_LOG_RATIO_MAX, _TOKEN_LOG_RATIO_MAX)
    return _masked_mean(torch.exp(lr) - lr - 1.0, m)


# --------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    clip_eps: ClipEps = 0.2,
    ref_logp: Optional[Tensor] = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict]:
    """GRPO: PPO clipped surrogate with a per-sequence advantage.

    ``advantages`` [B] (normally ``group_normalize(scores, group_ids)``) is
    broadcast over the response tokens. ρ_t = exp(logp_t - old_logp_t);
    per token -min(ρA, clip(ρ, 1-ε, 1+ε)A); aggregated as the token mean
    over every response token of the batch (masked sum / mask sum).
    ``clip_eps`` may be a pair (ε_low, ε_high) for asymmetric ("clip-higher")
    clipping. With ``ref_logp`` and ``kl_coef > 0`` the token-mean k3 KL times
    ``kl_coef`` is added. Stats: clip_frac, ratio_mean, adv_mean, kl (whenever
    ``ref_logp`` is given), pg_loss, ratio_max, n_tokens.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    _check_2d("old_logp", old_logp, logp.shape)
    m = _bool_mask(mask, logp)
    _check_1d("advantages", advantages, logp.shape[0])
    adv_tok = advantages.detach().to(logp.dtype)[:, None].expand_as(logp)
    loss, stats, _ = _clipped_surrogate(logp, old_logp, m, adv_tok, clip_eps)
    stats["adv_mean"] = _f(advantages.detach().to(logp.dtype).mean()) if advantages.numel() else 0.0
    if ref_logp is not None:
        _check_2d("ref_logp", ref_logp, logp.shape)
        kl = _k3(logp, ref_logp, m)
        if kl_coef > 0:
            loss = loss + kl_coef * kl
        stats["kl"] = _f(kl)
    return loss, stats


# --------------------------------------------------------------------------
# REINFORCE++
# --------------------------------------------------------------------------


class Across(NamedTuple):
    """Elementwise sum and max of a tensor over every rank holding part of the batch, for
    statistics of the global batch (REINFORCE++'s whitening). Passed in, so the functions
    here stay pure; ``LOCAL`` (one rank: the identity) by default."""

    sum: Callable[[Tensor], Tensor]
    max: Callable[[Tensor], Tensor]


LOCAL = Across(sum=lambda t: t, max=lambda t: t)


def reinforce_pp_advantages(
    scores: Tensor,
    mask: Tensor,
    logp_old: Tensor,
    ref_logp: Tensor,
    *,
    kl_coef: float,
    eps: float = 1e-8,
    across: Across = LOCAL,
) -> Tensor:
    """REINFORCE++ token advantages (Hu 2025; OpenRLHF ``reinforce``).

    Token reward r_t = -kl_coef * (logp_old_t - ref_logp_t) (the k1 KL of the
    behaviour policy against the reference, per token) plus the sequence
    score on the last response token. Returns-to-go with γ = 1:
    G_t = sum_{t' >= t} r_t' = score - kl_coef * sum_{t' >= t} k1_t'. Then
    global whitening over all response tokens of the batch:
    A = (G - mean) / (std + eps), population std. Zero at padding, zero
    everywhere if all returns are equal. No gradient.

    The whitening statistics are those of the tensors given, gathered over the
    ranks by ``across``: call this on each rank's whole share of the batch (before
    splitting into micro-batches), with ``across`` summing over the ranks.
    """
    if logp_old.dim() != 2:
        raise ValueError(f"logp_old must be [B, T], got {tuple(logp_old.shape)}")
    B, T = logp_old.shape
    m = _bool_mask(mask, logp_old)
    _check_2d("ref_logp", ref_logp, logp_old.shape)
    _check_1d("scores", scores, B)
    with torch.no_grad():
        dt = logp_old.dtype if torch.is_floating_point(logp_old) else torch.float32
        zero = torch.zeros((), dtype=dt, device=logp_old.device)
        k1 = torch.where(m, logp_old.to(dt) - ref_logp.to(dt), zero)
        r = -kl_coef * k1
        has = m.any(1)
        # index of the last response token: T-1 - (first True in the reversed row)
        last = (T - 1) - torch.flip(m, dims=[1]).to(torch.int8).argmax(1)
        s = torch.where(has, scores.to(dt), zero)
        r = r.scatter_add(1, last[:, None], s[:, None])
        r = torch.where(m, r, zero)
        # returns-to-go, γ = 1: reversed cumulative sum
        g = torch.flip(torch.cumsum(torch.flip(r, dims=[1]), dim=1), dims=[1])
        g = torch.where(m, g, zero)
        n, total = across.sum(torch.stack([m.sum().to(dt), g.sum()]))
        if n == 0:
            return torch.zeros_like(g)
        mean = total / n
        var = across.sum(torch.where(m, (g - mean).square(), zero).sum()) / n
        gmax, neg_gmin = across.max(torch.stack([torch.where(m, g, torch.full_like(zero, -math.inf)).max(),
                                                 torch.where(m, -g, torch.full_like(zero, -math.inf)).max()]))
        if gmax == -neg_gmin:
            return torch.zeros_like(g)
        adv = (g - mean) / (var.sqrt() + eps)
        return torch.where(m, adv, zero)


def reinforce_pp_loss(
    logp: Tensor,
    old_logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    clip_eps: ClipEps = 0.2,
) -> tuple[Tensor, dict]:
    """REINFORCE++ policy loss: PPO-clip surrogate with token advantages.

    ``advantages`` [B, T] from :func:`reinforce_pp_advantages` (the KL term
    already lives in the reward, so no separate KL loss). Token-mean
    aggregation as in :func:`grpo_loss`. Stats: clip_frac, ratio_mean,
    adv_mean (masked token mean), pg_loss, ratio_max, n_tokens.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(logp.shape)}")
    _check_2d("old_logp", old_logp, logp.shape)
    _check_2d("advantages", advantages, logp.shape)
    m = _bool_mask(mask, logp)
    loss, stats, _ = _clipped_surrogate(logp, old_logp, m, advantages, clip_eps)
    with torch.no_grad():
        stats["adv_mean"] = _f(_masked_mean(advantages.detach().to(logp.dtype), m))
    return loss, stats
