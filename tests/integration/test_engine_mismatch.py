"""A learner and one actor of each engine train on CPU with weight broadcasts
after every step, and the engine's recorded log-probs match the learner's.

``max_staleness = 0`` makes every trained sample one generated with the
learner's current weights, so every step measures the trainer–engine
mismatch (flowrl_learner_behaviour_logp_abs_diff / ..._mismatch_kl). The
learning rate is large enough that an engine still holding older weights
would show a gap orders of magnitude above the one asserted (checked below
against the weights before and after training).
"""
import json

import numpy as np
import pytest
import torch

from tests.integration.helpers import free_ports, metrics, start, wait_for

STEPS = 4


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_engine_logprobs_match_the_learner_after_weight_updates(tmp_path, engine):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=5)
    router, pub, weights, lmetrics, ametrics = free_ports(5)
    llog, alog = tmp_path / "learner.log", tmp_path / "actor.log"
    learner = start(["learner", "--model", model, "--max-steps", str(STEPS), "--actors", "1",
                     "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                     "--weight-port", str(weights), "--metrics-port", str(lmetrics),
                     "--run-dir", str(tmp_path / "run"), "--set", "groups_per_step=2", "--set", "sampling.n=4",
                     "--set", "sampling.max_tokens=10", "--set", "max_staleness=0", "--set", "lr=3e-3",
                     "--set", "linger_s=5"], llog)
    actor = start(["actors", "--n", "1", "--engine", engine, "--model", model,
                   "--learner", f"tcp://127.0.0.1:{router}", "--metrics-port", str(ametrics),
                   "--prompts-per-batch", "2", "--kv-cache-gib", "0.25", "--max-model-len", "256"], alog)
    try:
        wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total") == STEPS, 240,
                 f"{STEPS} steps", [learner, actor], [llog, alog])
        final = metrics(lmetrics)
        assert actor.wait(timeout=120) == 0, alog.read_text()[-3000:]
        assert learner.wait(timeout=60) == 0, llog.read_text()[-3000:]
    finally:
        for p in (learner, actor):
            if p.poll() is None:
                p.kill()

    rows = [json.loads(x) for x in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["staleness_mean"] == 0 for r in rows)
    diffs = [r["behaviour_logp_abs_diff"] for r in rows]
    kls = [r["behaviour_mismatch_kl"] for r in rows]
    assert all(d is not None and d < 1e-4 for d in diffs), diffs
    assert all(k is not None and abs(k) < 1e-6 for k in kls), kls
    assert final["flowrl_learner_behaviour_logp_abs_diff"] == pytest.approx(diffs[-1], abs=1e-9)
    assert final['flowrl_weightsync_broadcasts_total{role="learner"}'] >= STEPS - 1
    # Training moved the policy far enough that stale weights would have shown.
    assert _logp_shift(model, tmp_path / "run" / "checkpoint-final" / "policy") > 100 * max(diffs)


def _logp_shift(before: str, after) -> float:
    """Mean |Δ log p| per token between two models on random sequences."""
    from common.models import load_model

    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 90, (4, 24)))
    lp = [torch.log_softmax(load_model(str(m)).eval()(ids).logits.float(), -1) for m in (before, after)]
    return float((lp[0] - lp[1]).abs().mean())
