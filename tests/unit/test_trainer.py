"""The training step through DeepSpeed (one CPU rank over gloo) with each
objective: parameters move, the loss is finite, the log Z head trains only
under FlowRL and is never part of what actors receive."""
import math
import os

import numpy as np
import pytest
import torch

from common.config import load
from common.protocol import Completion
from learner.buffer import Group
from learner.config import LearnerConfig
from learner.model import reference_logprobs
from learner.trainer import Trainer, collate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from common.models import build_tiny_model

    import deepspeed
    saved = dict(os.environ)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_PORT", "29731")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    yield build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=2)
    # RANK/WORLD_SIZE would make learner subprocesses of later tests think torchrun started them
    os.environ.clear()
    os.environ.update(saved)


def on_policy(groups: list[Group], model_dir: str) -> list[Group]:
    """``groups`` with each completion's behaviour log-probs computed by the model itself."""
    from common.models import load_model
    logp = reference_logprobs(load_model(model_dir), collate(groups, 0), 1.0)
    k = 0
    for g in groups:
        for c in g.completions:
            c.logprobs = logp[k, :len(c.tokens)].numpy().astype(np.float32)
            k += 1
    return groups


def _groups(model_dir, n=4):
    """Two on-policy groups of ``n``, scores alternating 0 and 1."""
    rng = np.random.default_rng(0)
    groups = []
    for pid in range(2):
        prompt = rng.integers(3, 90, 5).astype(np.int32)
        comps = [Completion(rng.integers(3, 90, 3 + i).astype(np.int32), np.zeros(3 + i, np.float32), "length",
                            float(i % 2), 0) for i in range(n)]
        groups.append(Group(pid, prompt, comps, "a"))
    return on_policy(groups, model_dir)


@pytest.mark.parametrize("algo", ["flowrl", "grpo", "reinforce_pp"])
def test_step_trains_with_each_objective(tiny, algo):
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-2,
                                     "algo.algorithm": algo, "algo.kl_coef": 0.1 if algo != "flowrl" else 0.0})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    before = {n: p.detach().clone() for n, p in tr.module.named_parameters()}
    stats = tr.step(_groups(tiny), version=0)
    assert np.isfinite(stats["loss"])
    # every sample was made with these exact weights (version 0): the engine and learner agree
    assert stats["behaviour_logp_abs_diff"] < 1e-5 and abs(stats["behaviour_mismatch_kl"]) < 1e-6
    moved = {n for n, p in tr.module.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("policy.") for n in moved)
    assert any(n.startswith("log_z.") for n in moved) == (algo == "flowrl")
    named, ready = tr.snapshot()
    assert ready is None  # an event only on CUDA
    names = [n for n, _ in named]
    assert names and not any("log_z" in n for n in names)
    if algo == "flowrl":
        assert 0.99 < stats["is_weight_mean"] < 1.01  # on-policy groups: w = 1


@pytest.mark.parametrize("algo", ["grpo", "reinforce_pp"])
def test_a_token_mean_loss_does_not_depend_on_the_micro_batches(tiny, algo):
    """GRPO's and REINFORCE++'s loss is a mean over the batch's response tokens: cutting the
    batch into micro-batches of 1, 3 or all 8 sequences (a memory knob) must not change the
    loss, the gradient or the statistics. Weighting micro-batches by their sequences made
    short sequences count more. "_max" statistics are the batch's maximum, not a mean of
    the micro-batches' maxima."""
    results = []
    for micro in (1, 3, 8):
        torch.manual_seed(0)
        cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": micro, "lr": 1e-3,
                                         "algo.algorithm": algo, "algo.kl_coef": 0.1})
        groups = _groups(tiny)
        for c in groups[1].completions:  # off-policy by a varied amount: ratios differ per token
            c.logprobs = c.logprobs - 0.05 * np.arange(len(c.logprobs), dtype=np.float32)
        results.append(Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0).step(groups, version=0))
    one = results[-1]
    for stats in results[:-1]:
        for key in ("loss", "grad_norm", "clip_frac", "ratio_mean", "ratio_max", "kl"):
            if key in one:
                assert stats[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), (key, stats[key], one[key])
    assert one["ratio_max"] > 1.05


def test_the_policy_trains_without_dropout(tiny, tmp_path):
    """The actors sample in eval mode: a policy whose config has dropout must score their
    samples with it off, or on-policy samples look off-policy (importance weights != 1, a
    mismatch that is noise). The log Z head keeps its own dropout."""
    import json
    import shutil

    model = tmp_path / "dropout"
    shutil.copytree(tiny, model)
    cfg_json = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(cfg_json, attention_dropout=0.5)))
    cfg = load(LearnerConfig, None, {"model": str(model), "groups_per_step": 2, "micro_batch_seqs": 3})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    stats = tr.step(_groups(str(model)), version=0)
    assert stats["behaviour_logp_abs_diff"] < 1e-5
    assert 0.99 < stats["is_weight_mean"] < 1.01
    assert not tr.module.policy.training and tr.module.log_z.training


def test_log_z_gradient_reaches_the_llm(tiny):
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    batch = collate(_groups(tiny), 0)
    _, log_z = tr.module(batch, 1.0)
    tr.module.zero_grad()
    log_z.sum().backward()
    emb = tr.module.policy.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_mismatch_is_measured_only_on_samples_of_the_current_weights(tiny):
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    groups = _groups(tiny)
    for c in groups[1].completions:  # as if an engine recorded log-probs 0.5 too high
        c.logprobs = np.minimum(c.logprobs + 0.5, 0.0)
    stats = tr.step(groups, version=0)
    assert 0.1 < stats["behaviour_logp_abs_diff"] <= 0.5 / 2 + 1e-6  # half the tokens are off by <= 0.5
    assert stats["behaviour_mismatch_kl"] > 0.01
    stale = tr.step(_groups(tiny), version=1)  # samples of version 0 say nothing about version 1
    assert stale["behaviour_logp_abs_diff"] is None and stale["behaviour_mismatch_kl"] is None


def test_step_reports_gradient_lr_and_flowrl_diagnostics(tiny):
    """Issue 12: every step says how big the gradient was before the clip, whether the clip
    bound, the learning rate, FlowRL's terms and how many groups carried no signal."""
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 3e-4,
                                     "grad_clip": 1e-6})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    groups = _groups(tiny)
    for c in groups[1].completions:  # one group with equal scores: no signal
        c.score = 1.0
    stats = tr.step(groups, version=0)
    keys = ("grad_norm", "grad_clipped", "lr", "zero_variance_groups", "delta_mean", "delta_std", "log_z_mean",
            "log_z_std", "reward_term_mean", "reward_term_std")
    assert all(np.isfinite(stats[k]) for k in keys), {k: stats.get(k) for k in keys}
    # the norm before the clip: after it, it would be at most 1e-6
    assert stats["grad_norm"] > 1e-6 and stats["grad_clipped"] == 1.0
    assert stats["lr"] == 3e-4
    assert stats["zero_variance_groups"] == 0.5
    # group 0 has scores 0, 1, 0, 1: r̂ = ±0.866, so β·r̂ = ±12.99 with mean 0; group 1's r̂ = 0
    assert abs(stats["reward_term_mean"]) < 1e-4
    assert stats["reward_term_std"] == pytest.approx(15 * math.sqrt(3) / 2 / math.sqrt(2), rel=1e-4)
    assert stats["delta_std"] > 0 and stats["log_z_std"] >= 0
    relaxed = Trainer(load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "grad_clip": 1e9}),
                      0, 1, torch.device("cpu"), pad_id=0).step(_groups(tiny), version=0)
    assert relaxed["grad_clipped"] == 0.0 and 0 < relaxed["grad_norm"] < 1e9


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_a_non_finite_loss_skips_the_optimizer_step(tiny, zero_stage, dtype):
    """NaN weights would reach every actor: the step is skipped, the weights and the
    optimizer stay as they were, and the next finite step trains (bf16 at ZeRO 1 runs
    DeepSpeed's BF16_Optimizer, whose skip is its own)."""
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-2,
                                     "zero_stage": zero_stage, "dtype": dtype})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    before = {n: p.detach().clone() for n, p in tr.module.named_parameters()}
    poisoned = _groups(tiny)
    poisoned[1].completions[2].score = float("nan")  # what an unchecked ingest would let through
    stats = tr.step(poisoned, version=0)
    assert stats["skipped"] == "loss"
    assert not np.isfinite(stats["loss"])
    assert all(torch.equal(p, before[n]) for n, p in tr.module.named_parameters())
    stats = tr.step(_groups(tiny), version=0)
    assert stats["skipped"] == "" and np.isfinite(stats["loss"]) and np.isfinite(stats["grad_norm"])
    assert any(not torch.equal(p, before[n]) for n, p in tr.module.named_parameters())
    assert all(torch.isfinite(p).all() for p in tr.module.parameters())


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_learning_rate_follows_the_schedule_and_a_skipped_step_holds_it(tiny, zero_stage):
    """Warm-up 2 then cosine towards 0.1 × lr, reached at step 6 (one past the last of 6);
    the log Z head's own rate is scaled alike; a step skipped for a non-finite loss does not
    advance the schedule."""
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-3,
                                     "algo.log_z_lr": 1e-2, "lr_warmup_steps": 2, "lr_schedule": "cosine",
                                     "max_steps": 6, "min_lr_ratio": 0.1, "zero_stage": zero_stage})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    poisoned = _groups(tiny)
    poisoned[0].completions[0].score = float("nan")
    lrs, log_z_lrs = [], []
    for batch in [_groups(tiny), poisoned] + [_groups(tiny) for _ in range(4)]:
        lrs.append(tr.step(batch, version=0)["lr"])
        log_z_lrs.append(tr.engine.optimizer.param_groups[1]["lr"])
    # schedule steps 0..5 have factors 0.5, 1, then the cosine at 0, 1/4, 2/4, 3/4 of its 4
    # steps (1, 0.868, 0.55, 0.232); the skipped batch reports step 1's rate and the batch
    # after it trains at step 1's rate again
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx([1e-3 * x for x in [0.5, 1.0, 1.0, cos[0], cos[1], cos[2]]], rel=1e-9)
    # read after each batch: the next schedule step's factor times log_z_lr
    assert log_z_lrs == pytest.approx([1e-2 * x for x in [1.0, 1.0, cos[0], cos[1], cos[2], cos[3]]], rel=1e-9)


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_bfloat16_trains_at_every_zero_stage(tiny, zero_stage):
    """The GPU configuration (dtype bfloat16: DeepSpeed's bf16 optimizer, fp32 master weights,
    fp32 gradient accumulation under ZeRO): one step moves every trained weight, the report is finite and the snapshot for the actors
    is bfloat16."""
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-2,
                                     "dtype": "bfloat16", "zero_stage": zero_stage})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    before = {n: p.detach().clone() for n, p in tr.module.named_parameters()}
    stats = tr.step(_groups(tiny), version=0)
    assert stats["skipped"] == "" and np.isfinite(stats["loss"]) and 0 < stats["grad_norm"] < float("inf")
    assert all(not torch.equal(p, before[n]) for n, p in tr.module.named_parameters()), "a weight did not move"
    # micro-batch gradients add up in fp32 under ZeRO; DeepSpeed allows no fp32 sum at stage 0
    assert tr.engine.get_data_types() == (torch.bfloat16, torch.float32 if zero_stage else torch.bfloat16)
    named, _ = tr.snapshot()
    assert {t.dtype for _, t in named} == {torch.bfloat16}


@pytest.mark.parametrize("source", ["actor", "learner"])
def test_old_logp_source_learner_recomputes_the_behaviour_logprobs(tiny, source):
    """Actors' log-probs that are far off (here: every token at log p = -5): taken as π_old
    ("actor") they put every importance weight outside the clip; recomputed by the learner
    with its current weights ("learner") every weight is 1, whatever the actors reported."""
    cfg = load(LearnerConfig, None, {"model": tiny, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-3,
                                     "algo.old_logp_source": source})
    tr = Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)
    groups = _groups(tiny)
    for g in groups:
        for c in g.completions:
            c.logprobs = np.full(len(c.tokens), -5.0, dtype=np.float32)
    stats = tr.step(groups, version=0)
    if source == "learner":
        assert stats["is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and stats["is_clip_frac"] == 0.0
    else:
        assert stats["is_clip_frac"] == 1.0
