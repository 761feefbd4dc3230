"""What of the vLLM engine can be checked without vLLM or a GPU.

Covers our own code around vLLM: RequestOutput -> Sample conversion, seeds,
the engine's glue (against a stand-in ``vllm`` module that records calls), and
the worker extension's receive path over a real gloo WeightGroup on CPU.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import types
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from actors import engine_vllm, vllm_worker
from common.protocol import Sampling
from common.weight_sync import WeightGroup, WeightGroupSpec


def completion(index, tokens, logprobs, finish_reason="stop"):
    # vLLM's sampled-token log-probs: one {token_id: Logprob} map per position.
    lps = None if logprobs is None else [{t: NS(logprob=lp, rank=1)} for t, lp in zip(tokens, logprobs)]
    return NS(index=index, token_ids=list(tokens), logprobs=lps, finish_reason=finish_reason)


def test_modules_import_without_vllm():
    # A fresh interpreter: neither module may pull vllm in at import time.
    code = "import sys, actors.engine_vllm, actors.vllm_worker; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_to_samples_converts_tokens_logprobs_and_finish_reason():
    out = NS(outputs=[completion(0, [5, 7, 2], [-0.5, -1.25, 1e-8], "stop"),
                      completion(1, [9, 9], [-2.0, -0.125], "length")])
    s = engine_vllm._to_samples(out)
    assert [x.finish_reason for x in s] == ["stop", "length"]
    assert s[0].tokens.dtype == np.int32 and s[0].tokens.tolist() == [5, 7, 2]
    assert s[0].logprobs.dtype == np.float32
    # a hair above zero from rounding is clamped to 0 (the protocol rejects > 0)
    assert s[0].logprobs.tolist() == [-0.5, -1.25, 0.0]
    assert s[1].logprobs.tolist() == [-2.0, -0.125]


@pytest.mark.parametrize("bad", [completion(0, [1], [-1.0], "abort"), completion(0, [1], [-1.0], None),
                                 completion(0, [1, 2], None), completion(0, [1, 2], [-1.0, float("-inf")])])
def test_to_samples_refuses_untrainable_output(bad):
    with pytest.raises(RuntimeError):
        engine_vllm._to_samples(NS(outputs=[bad]))


def test_request_seeds_are_deterministic_and_never_share_a_child_stream():
    a = engine_vllm._request_seeds(7, 5, 4)
    assert a == engine_vllm._request_seeds(7, 5, 4)
    children = {s + j for s in a for j in range(4)}  # vLLM seeds child j with seed + j
    assert len(children) == 20
    assert engine_vllm._request_seeds(8, 5, 4)[0] != a[0]


# ------------------------------------------------------------ engine glue
class FakeLLM:
    """Stands in for vllm.LLM: records calls, answers like the V1 LLM does."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def generate(self, requests, params, use_tqdm):
        self.calls.append(("generate", requests, params))
        return [NS(outputs=[completion(j, [10 + i, 2], [-0.5, -0.25]) for j in range(p.n)])
                for i, p in enumerate(params)]

    def collective_rpc(self, method, args=()):
        self.calls.append((method, args))
        return [123] if method == "receive_weights" else [None]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return True

    def shutdown(self):
        self.calls.append(("shutdown",))


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: NS(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_engine_builds_llm_and_requests(fake_vllm):
    eng = engine_vllm.VLLMEngine("some/model", dtype="bfloat16", seed=3)
    kw = eng._llm.kwargs
    assert kw["worker_extension_cls"] == "actors.vllm_worker.WeightReceiverExtension"
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["dtype"] == "bfloat16" and kw["seed"] == 3
    prompts = [np.array([1, 2, 3], dtype=np.int32), np.array([4], dtype=np.int32)]
    groups = eng.generate(prompts, Sampling(n=2, temperature=0.7, top_p=1.0, max_tokens=16), seed=11)
    _, requests, params = eng._llm.calls[0]
    assert requests == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert all(isinstance(t, int) for t in requests[0]["prompt_token_ids"])
    p = params[0]
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.logprobs) == (2, 0.7, 1.0, 16, 0)
    assert [q.seed for q in params] == engine_vllm._request_seeds(11, 2, 2)
    assert [[s.tokens.tolist() for s in g] for g in groups] == [[[10, 2]] * 2, [[11, 2]] * 2]


def test_engine_weight_rpcs_reset_prefix_cache_and_close(fake_vllm):
    eng = engine_vllm.VLLMEngine("m", dtype="auto", seed=0)
    llm = eng._llm
    with pytest.raises(RuntimeError):
        eng.receive_weights()  # not joined yet
    spec = WeightGroupSpec("127.0.0.1", 1234, 3, 2, "nccl")
    eng.join_weight_group(spec, [["w", [2], "float32"]])
    assert eng.receive_weights() == 123
    eng.close()
    eng.close()  # idempotent
    assert [c[0] for c in llm.calls] == ["join_weight_group", "receive_weights", "reset_prefix_cache",
                                         "close_weight_group", "shutdown"]
    assert llm.calls[0][1] == (spec.as_dict(), [["w", [2], "float32"]])


def test_engine_refuses_tensor_parallel(fake_vllm):
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_vllm.VLLMEngine("m", dtype="auto", seed=0, tensor_parallel_size=2)


def test_engine_refuses_more_than_one_worker(fake_vllm):
    eng = engine_vllm.VLLMEngine("m", dtype="auto", seed=0)
    eng._llm.collective_rpc = lambda method, args=(): [None, None]
    with pytest.raises(RuntimeError, match="one vLLM worker"):
        eng.join_weight_group(WeightGroupSpec("h", 1, 2, 1, "nccl"), [])


# ------------------------------------------------------------ worker side
def test_by_bucket_groups_views_of_one_flat_buffer():
    a, b = torch.zeros(6), torch.zeros(4)
    stream = [("x", a[:2]), ("y", a[2:].view(2, 2)), ("z", b)]
    assert [[n for n, _ in bucket] for bucket in vllm_worker.by_bucket(stream)] == [["x", "y"], ["z"]]


class FakeModel:
    def __init__(self):
        self.loaded, self.calls = {}, 0

    def load_weights(self, weights):
        self.calls += 1
        for name, t in weights:
            self.loaded[name] = t.clone()
        return set(self.loaded)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_extension_receives_a_gloo_broadcast_into_load_weights():
    named = [("model.embed_tokens.weight", torch.randn(8, 4)),
             ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 4)),
             ("model.norm.weight", torch.randn(4, dtype=torch.float64))]
    spec = WeightGroupSpec("127.0.0.1", _free_port(), 2, 0, "gloo", timeout_s=60)
    worker = vllm_worker.WeightReceiverExtension()
    worker.device = torch.device("cpu")
    worker.model_runner = NS(model=FakeModel())
    manifest = [[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in named]

    result = {}

    def learner():
        group = WeightGroup(spec)
        result["sent"] = group.broadcast(named)
        group.close()

    thread = threading.Thread(target=learner)
    thread.start()
    worker.join_weight_group(spec.for_rank(1).as_dict(), [tuple(m) for m in manifest])
    with pytest.raises(RuntimeError):
        worker.join_weight_group(spec.for_rank(1).as_dict(), manifest)
    got = worker.receive_weights()
    thread.join(timeout=60)
    worker.close_weight_group()

    model = worker.model_runner.model
    assert got == result["sent"] == sum(t.numel() * t.element_size() for _, t in named)
    assert model.calls == 2  # one load_weights per bucket: float32 pair, then float64
    for name, t in named:
        assert torch.equal(model.loaded[name], t)
    with pytest.raises(RuntimeError):
        worker.receive_weights()
