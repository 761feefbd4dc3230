"""FlowRL matches a reward distribution; GRPO maximises reward and collapses.

Setting: a tabular softmax policy π_θ = softmax(θ) over K = 6 one-token
answers, a fixed non-uniform reference π_ref (the initial policy, as in
training), a learnable scalar log Z, Adam. Each answer is one sequence with
T = 1, so the masked mean log-prob of a sample is just log π_θ(a).

What FlowRL converges to
------------------------
flowrl_loss minimises E[w·δ²] with δ_a = log Z + log π_θ(a) − log π_ref(a)
− β·r̂, r̂ the *group-normalised* score. Two cases:

1. Full-support groups. If every "group" holds each answer exactly once,
   r̂_a is a deterministic function of the reward vector, and the loss
   (1/K)·Σ_a δ_a² reaches 0 exactly at
       π*(a) = π_ref(a)·exp(β r̂_a) / Z,   log Z = logsumexp(log π_ref + β r̂).
   Trajectory balance needs only full support, not on-policy samples, so this
   holds although the answers are not drawn from π_θ.

2. Groups of n answers sampled from π_θ (the real, on-policy setting, w = 1).
   Now r̂ of answer a depends on which other n−1 answers were drawn with it.
   Write c_a(π) = E[r̂ | a is a member, the other n−1 drawn i.i.d. from π].
   The expected gradient is
       ∂/∂log Z : 2 Σ_a π(a) (log Z + log π(a) − log π_ref(a) − β c_a(π))
       ∂/∂θ_k   : 2 Σ_a π(a) (…same…) (1[a=k] − π(k)),
   and both vanish iff log π(a) = log π_ref(a) + β c_a(π) − log Z for every a:
   the fixed point is the *self-consistent* target
       π* ∝ π_ref · exp(β c(π*)),   log Z* = logsumexp(log π_ref + β c(π*)).
   We compute c_a(π) exactly (enumerate the multisets of the other n−1
   members with their multinomial probabilities) and solve for π* by damped
   fixed-point iteration. With a moderate β (1.0) this map is a contraction
   and the target is well defined; with β = 15 and sampled groups it would
   put ~all mass on the correct answers and leave little to measure.
   For binary rewards all correct answers share one c, so among them
   π* ∝ π_ref exactly: FlowRL keeps every valid answer, weighted by the
   reference. With graded rewards the self-consistent target differs
   noticeably from the naive "full-support" formula (TV > 0.1 here), which
   the test checks so that matching it is not vacuous.

GRPO (same rewards, same sampling) climbs expected reward: with graded
rewards [1, .9, .8, 0, 0, 0] group normalisation keeps a non-zero advantage
between the good answers, and the policy collapses onto the best one. (With
exactly tied binary rewards the expected GRPO update between the tied
answers dies out once wrong answers vanish, since all-correct groups get zero
advantage, so the collapse comparison uses graded rewards.)
"""

from __future__ import annotations

import itertools
import math

import torch

from learner.losses import flowrl_loss, group_normalize, grpo_loss

K = 6
REF_LOGITS = torch.tensor([0.6, 0.0, -0.6, 0.4, 0.0, -0.4], dtype=torch.float64)
LOG_REF = torch.log_softmax(REF_LOGITS, 0)
BINARY = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
GRADED = torch.tensor([1.0, 0.9, 0.8, 0.0, 0.0, 0.0], dtype=torch.float64)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def entropy(p: torch.Tensor) -> float:
    return -(p * p.clamp_min(1e-30).log()).sum().item()


# --------------------------------------------------------------------------
# exact targets
# --------------------------------------------------------------------------


def _expected_rhat(pi: torch.Tensor, r: torch.Tensor, n: int, eps: float = 1e-6) -> torch.Tensor:
    """c_a = E[r̂ of a | other n-1 members i.i.d. from pi], exact, float64.

    Same definition as group_normalize: unbiased std + eps, 0 if the group's
    scores are all equal.
    """
    rows = []
    for combo in itertools.combinations_with_replacement(range(K), n - 1):
        rows.append([combo.count(k) for k in range(K)])
    other = torch.tensor(rows, dtype=torch.float64)  # [M, K]
    log_coef = math.lgamma(n) - torch.lgamma(other + 1).sum(1)
    prob = torch.exp(log_coef + (other * pi.log()).sum(1))  # [M]
    assert abs(prob.sum().item() - 1) < 1e-9
    cnt = other[None] + torch.eye(K, dtype=torch.float64)[:, None]  # [K(a), M, K]
    mean = (cnt * r).sum(-1) / n
    var = (cnt * (r - mean[..., None]) ** 2).sum(-1) / (n - 1)
    rhat = (r[:, None] - mean) / (var.sqrt() + eps)
    present = cnt > 0
    big = torch.tensor(1e9, dtype=torch.float64)
    smax = torch.where(present, r, -big).amax(-1)
    smin = torch.where(present, r, big).amin(-1)
    rhat = torch.where(smax == smin, torch.zeros_like(rhat), rhat)
    return (rhat * prob).sum(-1)


def self_consistent_target(r: torch.Tensor, n: int, beta: float):
    """Solve π = softmax(log π_ref + β c(π)) by damped iteration."""
    pi = LOG_REF.exp()
    for _ in range(2000):
        new = torch.softmax(LOG_REF + beta * _expected_rhat(pi, r, n), 0)
        if (new - pi).abs().max() < 1e-12:
            break
        pi = 0.5 * pi + 0.5 * new
    c = _expected_rhat(pi, r, n)
    assert (torch.softmax(LOG_REF + beta * c, 0) - pi).abs().max() < 1e-9, "no fixed point"
    return pi, torch.logsumexp(LOG_REF + beta * c, 0).item()


def full_support_target(r: torch.Tensor, beta: float):
    rhat = group_normalize(r, torch.zeros(K, dtype=torch.long))
    return torch.softmax(LOG_REF + beta * rhat, 0), torch.logsumexp(LOG_REF + beta * rhat, 0).item()


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


def train(loss_name: str, r: torch.Tensor, *, beta: float = 1.0, n: int = 8, groups: int = 16,
          steps: int = 1000, lr: float = 0.05, seed: int = 0, full_support: bool = False):
    """Adam on (θ, log Z), θ initialised at the reference logits."""
    gen = torch.Generator().manual_seed(seed)
    theta = REF_LOGITS.float().clone().requires_grad_()
    log_z = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([theta, log_z], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2], gamma=0.2)
    log_ref = LOG_REF.float()
    rf = r.float()
    if full_support:
        n, groups = K, 1
    gids = torch.arange(groups).repeat_interleave(n)
    mask = torch.ones(groups * n, 1)
    for _ in range(steps):
        log_pi = torch.log_softmax(theta, 0)
        if full_support:
            a = torch.arange(K)
        else:
            a = torch.multinomial(log_pi.detach().exp(), groups * n, replacement=True, generator=gen)
        logp = log_pi[a][:, None]  # [B, T=1]
        rhat = group_normalize(rf[a], gids)
        if loss_name == "flowrl":
            loss, st = flowrl_loss(logp, logp.detach(), log_ref[a][:, None], mask,
                                   log_z.expand(len(a)), rhat, beta=beta)
            assert st["is_weight_mean"] == 1.0  # on-policy: w = 1
        else:
            loss, _ = grpo_loss(logp, logp.detach(), mask, rhat)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.softmax(theta.detach().double(), 0), log_z.item()


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_flowrl_full_support_groups_reach_exact_target_default_beta():
    beta = 15.0  # the default: wrong answers get ~exp(-27) relative mass
    target, log_z_target = full_support_target(BINARY, beta)
    pi, log_z = train("flowrl", BINARY, beta=beta, full_support=True, steps=600, lr=0.1)
    assert tv(pi, target) < 0.01
    # among the correct answers the policy keeps the reference's proportions
    within = pi[:3] / pi[:3].sum()
    ref_within = LOG_REF[:3].exp() / LOG_REF[:3].exp().sum()
    assert (within - ref_within).abs().max().item() < 0.01
    assert pi[3:].sum().item() < 1e-3
    assert abs(log_z - log_z_target) < 0.1


def test_flowrl_sampled_groups_binary_rewards_match_self_consistent_target():
    target, log_z_target = self_consistent_target(BINARY, n=8, beta=1.0)
    # target: correct answers ∝ π_ref, wrong answers keep a little mass
    assert torch.allclose(target[:3] / target[:3].sum(), LOG_REF[:3].exp() / LOG_REF[:3].exp().sum())
    pi, log_z = train("flowrl", BINARY, beta=1.0)
    assert tv(pi, target) < 0.05, (pi, target)
    assert abs(log_z - log_z_target) < 0.1
    # multi-modal: every correct answer keeps its reference-weighted share
    assert pi[:3].min().item() > 0.1
    ratio = (pi[0] / pi[1]).item()
    assert abs(math.log(ratio) - (REF_LOGITS[0] - REF_LOGITS[1]).item()) < 0.15


def test_graded_rewards_flowrl_matches_target_grpo_collapses():
    target, log_z_target = self_consistent_target(GRADED, n=8, beta=1.0)
    naive, _ = full_support_target(GRADED, beta=1.0)
    assert tv(target, naive) > 0.1  # group composition matters: the test is not vacuous

    pi_flow, log_z = train("flowrl", GRADED, beta=1.0)
    assert tv(pi_flow, target) < 0.05, (pi_flow, target)
    assert abs(log_z - log_z_target) < 0.1
    assert (pi_flow[:3] > 0.04).all()  # all three good answers stay alive
    assert entropy(pi_flow) > 0.8

    pi_grpo, _ = train("grpo", GRADED)
    assert pi_grpo.argmax().item() == 0
    assert pi_grpo.max().item() > 0.9
    assert entropy(pi_grpo) < 0.2
    assert tv(pi_grpo, target) > 0.25
