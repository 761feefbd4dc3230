"""The learner's log-probs of a completion equal the behaviour log-probs the HF
engine recorded while sampling it (same temperature), so that on-policy the
importance weight is 1, and the batch collation puts tokens where the forward
expects them."""
import numpy as np
import pytest
import torch

from actors.engine_hf import HFEngine
from common.models import load_model
from common.protocol import Sampling
from learner.buffer import Group
from learner.model import reference_logprobs
from learner.trainer import collate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from common.models import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_learner_recomputes_behaviour_logprobs(tiny, temperature, top_p):
    engine = HFEngine(tiny, device="cpu", dtype="float32", seed=0)
    prompts = [np.array([5, 6, 7, 8], np.int32), np.array([9, 10], np.int32)]  # different lengths: left padding
    groups_out = engine.generate(prompts, Sampling(3, temperature, top_p, 12), seed=4)
    from common.protocol import Completion
    groups = [Group(i, p, [Completion(s.tokens, s.logprobs, s.finish_reason, 0.0, 0) for s in samples], "a")
              for i, (p, samples) in enumerate(zip(prompts, groups_out))]
    batch = collate(groups, pad_id=0)
    model = load_model(tiny)
    logp = reference_logprobs(model, batch, temperature)
    torch.testing.assert_close(logp * batch.mask, batch.old_logp * batch.mask, atol=2e-4, rtol=0)
    assert batch.mask.sum() == sum(len(s.tokens) for g in groups_out for s in g)
    # a different temperature gives different log-probs: the test can tell them apart
    assert (reference_logprobs(model, batch, temperature * 2) - batch.old_logp).abs().max() > 1e-2
