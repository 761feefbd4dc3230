"""Unit tests for learner/losses.py against hand-computed values.

Expected values are written out as plain Python float arithmetic (math.exp,
math.log, explicit sums), not by re-running the vectorised formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    flowrl_loss,
    group_normalize,
    grpo_loss,
    reinforce_pp_advantages,
    reinforce_pp_loss,
)

D = torch.float64


def t(x, dtype=D, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------
# group_normalize
# --------------------------------------------------------------------------


def test_group_normalize_hand_values_and_degenerate_groups():
    # group 3: {1, 0, 1}; group 7: {0.1, 0.1, 0.1}; group 9: {5}; ids interleaved
    scores = t([1.0, 0.1, 0.0, 5.0, 0.1, 1.0, 0.1])
    ids = torch.tensor([3, 7, 3, 9, 7, 3, 7])
    out = group_normalize(scores, ids)
    assert out.dtype == D and out.shape == (7,)

    mean3 = (1.0 + 0.0 + 1.0) / 3
    std3 = math.sqrt(((1 - mean3) ** 2 * 2 + (0 - mean3) ** 2) / (3 - 1))  # unbiased
    assert std3 == pytest.approx(math.sqrt(1 / 3))
    assert out[0].item() == pytest.approx((1 - mean3) / (std3 + 1e-6), abs=1e-12)
    assert out[2].item() == pytest.approx((0 - mean3) / (std3 + 1e-6), abs=1e-12)
    assert out[5].item() == pytest.approx((1 - mean3) / (std3 + 1e-6), abs=1e-12)
    # (0.1+0.1+0.1)/3 != 0.1 in floating point, yet the result must be exactly 0
    assert (0.1 + 0.1 + 0.1) / 3 != 0.1
    for i in (1, 4, 6):
        assert out[i].item() == 0.0
    assert out[3].item() == 0.0  # size-1 group


def test_group_normalize_eps_int_scores_and_float32():
    # two-member group {0, 2}: mean 1, unbiased std sqrt(2); custom eps
    out = group_normalize(torch.tensor([0, 2, 7]), torch.tensor([0, 0, 1]), eps=0.5)
    assert out.dtype == torch.float32  # integer scores become float
    s = math.sqrt(((0 - 1) ** 2 + (2 - 1) ** 2) / 1)
    assert out.tolist() == pytest.approx([-1 / (s + 0.5), 1 / (s + 0.5), 0.0], abs=1e-6)
    # all-equal groups in float32 with awkward values stay exactly 0
    z = group_normalize(torch.full((5,), 0.3, dtype=torch.float32), torch.zeros(5, dtype=torch.long))
    assert torch.equal(z, torch.zeros(5))
    # every group's normalised scores sum to 0 and have unbiased std ~1
    g = torch.Generator().manual_seed(0)
    sc = torch.rand(40, generator=g, dtype=D)
    ids = torch.arange(40) % 5
    o = group_normalize(sc, ids)
    for k in range(5):
        assert o[ids == k].sum().item() == pytest.approx(0.0, abs=1e-12)
        assert o[ids == k].std().item() == pytest.approx(1.0, abs=1e-4)


def test_group_normalize_shape_errors():
    with pytest.raises(ValueError):
        group_normalize(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        group_normalize(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


# --------------------------------------------------------------------------
# flowrl_loss: a tiny hand-computed case
# --------------------------------------------------------------------------

# B=2, T=3; the third position of row 1 is padding.
LOGP = [[-1.0, -2.0, -0.5], [-0.3, -0.7, 9.0]]
OLD = [[-1.1, -2.0, -0.6], [-0.3, -0.5, 0.0]]  # summed log-ratios: 0.2, -0.2
REF = [[-1.5, -1.5, -1.0], [-0.4, -0.4, 0.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
LOG_Z = [0.5, -0.2]
REW = [0.7, -0.7]
BETA = 2.0


def _hand_deltas(length_norm=True, use_ref=True):
    if length_norm:
        lt = [(-1.0 - 2.0 - 0.5) / 3, (-0.3 - 0.7) / 2]
        lr = [(-1.5 - 1.5 - 1.0) / 3, (-0.4 - 0.4) / 2]
    else:
        lt = [-1.0 - 2.0 - 0.5, -0.3 - 0.7]
        lr = [-1.5 - 1.5 - 1.0, -0.4 - 0.4]
    if not use_ref:
        lr = [0.0, 0.0]
    return [LOG_Z[i] + lt[i] - lr[i] - BETA * REW[i] for i in range(2)]


def _flow(**kw):
    logp = kw.pop("logp", t(LOGP, grad=True))
    log_z = kw.pop("log_z", t(LOG_Z, grad=True))
    ref = kw.pop("ref", t(REF))
    loss, st = flowrl_loss(logp, t(OLD), ref, t(MASK), log_z, t(REW), beta=BETA, **kw)
    return loss, st, logp, log_z


def test_flowrl_hand_value_and_stats():
    loss, st, _, _ = _flow()
    d0, d1 = _hand_deltas()
    assert d0 == pytest.approx(0.5 + 0.5 / 3 - 1.4)
    assert d1 == pytest.approx(1.1)
    # row 0: exp(0.2) = 1.2214 > 1.2 -> clipped to 1.2; row 1: exp(-0.2) in range
    w0, w1 = 1.2, math.exp(-0.2)
    expected = (w0 * d0 * d0 + w1 * d1 * d1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert st["is_weight_mean"] == pytest.approx((w0 + w1) / 2)
    assert st["is_clip_frac"] == pytest.approx(0.5)
    assert st["delta_mean"] == pytest.approx((d0 + d1) / 2)
    assert st["log_z_mean"] == pytest.approx((0.5 - 0.2) / 2)
    assert st["logp_mean"] == pytest.approx(((-3.5 / 3) + (-0.5)) / 2)
    assert st["ref_logp_mean"] == pytest.approx(((-4.0 / 3) + (-0.4)) / 2)
    assert st["log_ratio_mean"] == pytest.approx((0.2 - 0.2) / 2, abs=1e-12)
    assert st["delta_sq_mean"] == pytest.approx((d0 * d0 + d1 * d1) / 2)
    assert st["log_z_sq_mean"] == pytest.approx((0.5 ** 2 + 0.2 ** 2) / 2)
    assert st["reward_term_mean"] == pytest.approx(BETA * (REW[0] + REW[1]) / 2)
    assert st["reward_term_sq_mean"] == pytest.approx(BETA ** 2 * (REW[0] ** 2 + REW[1] ** 2) / 2)
    assert all(isinstance(v, float) for v in st.values())


def test_flowrl_gradients_by_hand_and_w_is_constant():
    loss, _, logp, log_z = _flow()
    loss.backward()
    d0, d1 = _hand_deltas()
    w0, w1 = 1.2, math.exp(-0.2)
    # dL/dlogZ_i = 2 w_i delta_i / B
    assert log_z.grad.tolist() == pytest.approx([2 * w0 * d0 / 2, 2 * w1 * d1 / 2], rel=1e-12)
    # dL/dlogp_it = 2 w_i delta_i / B * mask_it / n_i; w contributes nothing
    # (row 1 is *not* clipped, so a non-detached w would add exp(-0.2)*d1^2/2 here)
    g1 = 2 * w1 * d1 / 2 / 2
    g0 = 2 * w0 * d0 / 2 / 3
    assert logp.grad.tolist()[0] == pytest.approx([g0, g0, g0], rel=1e-12)
    assert logp.grad.tolist()[1] == pytest.approx([g1, g1, 0.0], rel=1e-12)


def test_flowrl_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 5
    mask = torch.ones(B, T, dtype=D)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    ref = -torch.rand(B, T, generator=g, dtype=D)
    rew = torch.randn(B, generator=g, dtype=D)
    logp0 = -torch.rand(B, T, generator=g, dtype=D)
    logz0 = torch.randn(B, generator=g, dtype=D)

    def f_noweight(lp, lz):
        return flowrl_loss(lp, lp.detach(), ref, mask, lz, rew, beta=1.5, is_clip=None)[0]

    # w saturated at the clip bounds: locally constant, so finite differences
    # see exactly the function autograd differentiates
    old_sat = logp0.detach() + torch.tensor([3.0, -3.0, 3.0, -3.0], dtype=D)[:, None]

    def f_clipped(lp, lz):
        return flowrl_loss(lp, old_sat, ref, mask, lz, rew, beta=1.5, is_clip=(0.8, 1.2))[0]

    for fn in (f_noweight, f_clipped):
        lp = logp0.clone().requires_grad_()
        lz = logz0.clone().requires_grad_()
        assert torch.autograd.gradcheck(fn, (lp, lz), eps=1e-6, atol=1e-8)

    for ln in (True, False):
        lp = logp0.clone().requires_grad_()
        lz = logz0.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: flowrl_loss(a, a.detach(), ref, mask, b, rew, is_clip=None, length_norm=ln)[0],
            (lp, lz),
        )


def test_flowrl_ref_old_reward_get_no_gradient():
    logp = t(LOGP, grad=True)
    old, ref, rew = t(OLD, grad=True), t(REF, grad=True), t(REW, grad=True)
    loss, _ = flowrl_loss(logp, old, ref, t(MASK), t(LOG_Z, grad=True), rew, beta=BETA)
    loss.backward()
    assert old.grad is None and ref.grad is None and rew.grad is None


def _w_of(log_ratio: float, is_clip):
    """Importance weight flowrl_loss uses for one 1-token sequence."""
    logp = t([[0.0]], grad=True)
    old = t([[-log_ratio]])
    # delta = log_z = 1 exactly, so the loss equals w
    loss, st = flowrl_loss(logp, old, t([[0.0]]), t([[1.0]]), t([1.0]), t([0.0]), is_clip=is_clip)
    assert loss.item() == pytest.approx(st["is_weight_mean"], rel=1e-12)
    return loss.item(), st["is_clip_frac"]


def test_flowrl_clipping_bounds():
    assert _w_of(1.0, (0.8, 1.2)) == pytest.approx((1.2, 1.0))
    assert _w_of(-1.0, (0.8, 1.2)) == pytest.approx((0.8, 1.0))
    assert _w_of(0.1, (0.8, 1.2)) == pytest.approx((math.exp(0.1), 0.0))
    # upper cap only (the reference code's clip-high form)
    assert _w_of(-5.0, (None, 10.0)) == pytest.approx((math.exp(-5.0), 0.0))
    assert _w_of(5.0, (None, 10.0)) == pytest.approx((10.0, 1.0))
    # lower bound only
    assert _w_of(1.0, (0.8, None)) == pytest.approx((math.e, 0.0))
    assert _w_of(-1.0, (0.8, None)) == pytest.approx((0.8, 1.0))
    # no importance weighting at all
    assert _w_of(3.0, None) == pytest.approx((1.0, 0.0))
    assert _w_of(-3.0, None) == pytest.approx((1.0, 0.0))
    for bad in ((0.0, 1.2), (1.2, 0.8), (-1.0, None)):
        with pytest.raises(ValueError):
            _w_of(0.0, bad)


def test_flowrl_long_sequences_stay_finite():
    T = 8192
    g = torch.Generator().manual_seed(1)
    base = -3 * torch.rand(3, T, generator=g)  # float32, as in training
    logp = base.clone().requires_grad_()
    # summed log-ratios +4096, -4096, +4096: exp overflows float32 by far
    old = base - torch.tensor([0.5, -0.5, 0.5])[:, None]
    mask = torch.ones(3, T)
    mask[2, 6000:] = 0  # and a partly padded one
    log_z = torch.zeros(3, requires_grad=True)
    ref = -3 * torch.rand(3, T, generator=g)
    rew = torch.tensor([1.0, -1.0, 0.5])
    for ln in (True, False):
        logp.grad = None
        log_z.grad = None
        loss, st = flowrl_loss(logp, old, ref, mask, log_z, rew, length_norm=ln)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(logp.grad).all() and torch.isfinite(log_z.grad).all()
        assert st["is_clip_frac"] == 1.0
        assert st["is_weight_mean"] == pytest.approx((1.2 + 0.8 + 1.2) / 3, rel=1e-6)
        assert st["log_ratio_mean"] == pytest.approx((4096 - 4096 + 3000) / 3, rel=1e-4)
        # the weight is the bound itself: dL/dlogZ_i = 2 w_i delta_i / B
        l_t = (logp.detach() * mask).sum(1) / (mask.sum(1) if ln else 1)
        l_r = (ref * mask).sum(1) / (mask.sum(1) if ln else 1)
        delta = l_t - l_r - 15.0 * rew
        w = torch.tensor([1.2, 0.8, 1.2])
        assert torch.allclose(log_z.grad, 2 * w * delta / 3, rtol=1e-4)
    # with no upper bound the weight is huge but finite
    loss, st = flowrl_loss(logp, old, ref, mask, log_z, rew, is_clip=(0.8, None))
    assert torch.isfinite(loss) and math.isfinite(st["is_weight_max"])


def test_flowrl_masked_positions_have_no_effect():
    g = torch.Generator().manual_seed(2)
    B, T = 3, 6
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]], dtype=D)
    logp = -torch.rand(B, T, generator=g, dtype=D)
    old = logp - 0.05 * torch.randn(B, T, generator=g, dtype=D)
    ref = -torch.rand(B, T, generator=g, dtype=D)
    lz = torch.randn(B, dtype=D)
    rew = torch.randn(B, dtype=D)

    def run(lp, o, r):
        lp = lp.clone().requires_grad_()
        z = lz.clone().requires_grad_()
        loss, st = flowrl_loss(lp, o, r, mask, z, rew, is_clip=(0.5, 2.0))
        loss.backward()
        return loss.detach(), lp.grad, z.grad, st

    a = run(logp, old, ref)
    pad = mask == 0
    junk = torch.full_like(logp, 123.0)
    junk[0, 4] = -math.inf
    junk[1, 5] = math.nan
    b = run(torch.where(pad, junk, logp), torch.where(pad, -junk, old), torch.where(pad, junk, ref))
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert a[3] == b[3]
    assert torch.all(a[1][pad] == 0)


def test_flowrl_ablation_switches():
    d = _hand_deltas(length_norm=False)
    w0, w1 = 1.2, math.exp(-0.2)
    loss, _, _, _ = _flow(length_norm=False)
    assert loss.item() == pytest.approx((w0 * d[0] ** 2 + w1 * d[1] ** 2) / 2, rel=1e-12)

    d = _hand_deltas(use_ref=False)
    loss, st, _, _ = _flow(use_ref=False, ref=None)
    assert loss.item() == pytest.approx((w0 * d[0] ** 2 + w1 * d[1] ** 2) / 2, rel=1e-12)
    assert st["ref_logp_mean"] == 0.0
    # a given ref_logp is ignored under use_ref=False
    loss2, _, _, _ = _flow(use_ref=False)
    assert loss2.item() == loss.item()

    d = _hand_deltas(length_norm=False, use_ref=False)
    loss, _, _, _ = _flow(use_ref=False, length_norm=False, is_clip=None)
    assert loss.item() == pytest.approx((d[0] ** 2 + d[1] ** 2) / 2, rel=1e-12)

    with pytest.raises(ValueError):
        _flow(ref=None)  # use_ref=True needs ref_logp


def test_flowrl_accepts_log_z_column_and_checks_shapes():
    loss_a, _, _, _ = _flow()
    loss_b, _, _, _ = _flow(log_z=t([[0.5], [-0.2]], grad=True))
    assert loss_a.item() == loss_b.item()
    with pytest.raises(ValueError):
        _flow(log_z=t([0.5, -0.2, 0.0]))


# --------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------

# ratios exp(log-ratio): row 0 (A=+1): e^0.1 (inside), e^0.5 (clipped at 1.2),
# e^-0.5 (below 0.8 but the unclipped term is the min: not clipped);
# row 1 (A=-2): e^-0.5 (clipped at 0.8), e^0.5 (unclipped term is the max), pad.
G_LR = [[0.1, 0.5, -0.5], [-0.5, 0.5, 0.0]]
G_MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
G_ADV = [1.0, -2.0]


def _grpo(**kw):
    old = t([[-1.0, -2.0, -1.5], [-0.7, -1.2, -3.0]])
    logp = (old + t(G_LR)).detach().requires_grad_()
    loss, st = grpo_loss(logp, old, t(G_MASK), t(G_ADV), **kw)
    return loss, st, logp, old


def test_grpo_hand_value_clipping_and_gradient():
    loss, st, logp, _ = _grpo()
    e = math.exp
    per_tok = [
        -min(e(0.1) * 1, 1.2 * 1),  # -1.10517 (unclipped)
        -min(e(0.5) * 1, 1.2 * 1),  # -1.2     (clipped)
        -min(e(-0.5) * 1, 0.8 * 1),  # -0.60653 (unclipped, pessimistic)
        -min(e(-0.5) * -2, 0.8 * -2),  # +1.6    (clipped)
        -min(e(0.5) * -2, 1.2 * -2),  # +3.29744 (unclipped)
    ]
    assert per_tok[1] == -1.2 and per_tok[3] == pytest.approx(1.6)
    assert loss.item() == pytest.approx(sum(per_tok) / 5, rel=1e-12)
    assert st["clip_frac"] == pytest.approx(2 / 5)
    ratios = [e(0.1), e(0.5), e(-0.5), e(-0.5), e(0.5)]
    assert st["ratio_mean"] == pytest.approx(sum(ratios) / 5)
    assert st["adv_mean"] == pytest.approx(-0.5)
    assert "kl" not in st
    loss.backward()
    # d/dlogp of -A*rho = -A*rho on unclipped tokens, 0 on clipped ones, / 5 tokens
    expected = [[-e(0.1) / 5, 0.0, -e(-0.5) / 5], [0.0, 2 * e(0.5) / 5, 0.0]]
    for r in range(2):
        assert logp.grad[r].tolist() == pytest.approx(expected[r], abs=1e-12)


def test_grpo_k3_kl():
    old = t([[-1.0, -2.0, -1.5], [-0.7, -1.2, -3.0]])
    logp_v = [[old[i][j].item() + G_LR[i][j] for j in range(3)] for i in range(2)]
    ref_v = [[-1.3, -1.0, -1.5], [-0.2, -2.2, 5.0]]
    loss0, _, _, _ = _grpo()
    loss, st, _, _ = _grpo(ref_logp=t(ref_v), kl_coef=0.1)
    k3 = []
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        x = ref_v[i][j] - logp_v[i][j]
        k3.append(math.exp(x) - x - 1)
    kl = sum(k3) / 5
    assert st["kl"] == pytest.approx(kl, rel=1e-12)
    assert loss.item() == pytest.approx(loss0.item() + 0.1 * kl, rel=1e-12)
    # kl reported but not added when kl_coef == 0
    loss_nc, st_nc, _, _ = _grpo(ref_logp=t(ref_v))
    assert loss_nc.item() == loss0.item() and st_nc["kl"] == pytest.approx(kl)


def test_grpo_masked_positions_and_extremes():
    loss_a, _, _, _ = _grpo()
    old = t([[-1.0, -2.0, -1.5], [-0.7, -1.2, math.nan]])
    lp = old + t(G_LR)
    lp[1, 2] = -math.inf
    lp = lp.detach().requires_grad_()
    loss_b, _ = grpo_loss(lp, old, t(G_MASK), t(G_ADV))
    loss_b.backward()
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-12)
    assert lp.grad[1, 2].item() == 0.0
    # a huge per-token ratio with a negative advantage stays finite
    lp = torch.tensor([[500.0]], requires_grad=True)
    loss, _ = grpo_loss(lp, torch.tensor([[0.0]]), torch.ones(1, 1), torch.tensor([-1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


# --------------------------------------------------------------------------
# REINFORCE++
# --------------------------------------------------------------------------


def test_reinforce_pp_advantages_hand():
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ref = t([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    kl_tok = [[0.2, -0.1, 0.3], [0.5, 0.1, 7.0]]  # old - ref; last of row 1 is padding
    old = ref + t(kl_tok)
    adv = reinforce_pp_advantages(t([1.0, 0.0]), mask, old, ref, kl_coef=0.1)
    # token rewards: -0.1 * kl, plus the score on the last response token
    r0 = [-0.02, 0.01, -0.03 + 1.0]
    r1 = [-0.05, -0.01 + 0.0]
    # returns-to-go, gamma = 1
    g0 = [r0[0] + r0[1] + r0[2], r0[1] + r0[2], r0[2]]  # 0.96, 0.98, 0.97
    g1 = [r1[0] + r1[1], r1[1]]  # -0.06, -0.01
    allg = g0 + g1
    mu = sum(allg) / 5
    sd = math.sqrt(sum((x - mu) ** 2 for x in allg) / 5)  # population std
    exp0 = [(x - mu) / (sd + 1e-8) for x in g0]
    exp1 = [(x - mu) / (sd + 1e-8) for x in g1] + [0.0]
    assert adv[0].tolist() == pytest.approx(exp0, abs=1e-10)
    assert adv[1].tolist() == pytest.approx(exp1, abs=1e-10)
    assert not adv.requires_grad


def test_reinforce_pp_advantages_layout_and_degenerate():
    # response not right-aligned: the score lands on the last masked position
    mask = t([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    z = torch.zeros(2, 4, dtype=D)
    adv = reinforce_pp_advantages(t([2.0, 0.0]), mask, z, z, kl_coef=0.5)
    # kl = 0: returns are 2,2 on row 0 and 0,0,0,0 on row 1
    mu = (2 + 2) / 6
    sd = math.sqrt((2 * (2 - mu) ** 2 + 4 * mu**2) / 6)
    a, b = (2 - mu) / (sd + 1e-8), -mu / (sd + 1e-8)
    assert adv[0].tolist() == pytest.approx([0.0, a, a, 0.0])
    assert adv[1].tolist() == pytest.approx([b, b, b, b])
    # all returns equal -> exactly zero advantages; empty rows are fine
    mask2 = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z2 = torch.zeros(2, 3, dtype=D)
    assert torch.equal(reinforce_pp_advantages(t([0.3, 0.9]), mask2, z2, z2, kl_coef=0.1), z2)


def test_reinforce_pp_loss_matches_hand_and_grpo_broadcast():
    old = t([[-1.0, -2.0, -1.5], [-0.7, -1.2, -3.0]])
    logp = (old + t(G_LR)).detach().requires_grad_()
    adv_tok = t([[1.0, -1.0, 0.5], [2.0, 0.0, 9.0]])
    loss, st = reinforce_pp_loss(logp, old, t(G_MASK), adv_tok)
    e = math.exp
    per_tok = [
        -min(e(0.1) * 1.0, 1.2 * 1.0),
        -min(e(0.5) * -1.0, 1.2 * -1.0),  # +e^0.5, unclipped
        -min(e(-0.5) * 0.5, 0.8 * 0.5),  # unclipped
        -min(e(-0.5) * 2.0, 0.8 * 2.0),  # unclipped (ratio low, A > 0)
        -0.0,
    ]
    assert loss.item() == pytest.approx(sum(per_tok) / 5, rel=1e-12)
    assert st["adv_mean"] == pytest.approx((1.0 - 1.0 + 0.5 + 2.0 + 0.0) / 5)
    assert st["clip_frac"] == 0.0
    # with a per-sequence advantage it is exactly the GRPO surrogate
    lg, sg = grpo_loss(logp, old, t(G_MASK), t(G_ADV))
    lr, sr = reinforce_pp_loss(logp, old, t(G_MASK), t(G_ADV)[:, None].expand(2, 3))
    assert lr.item() == lg.item() and sr["clip_frac"] == sg["clip_frac"]
