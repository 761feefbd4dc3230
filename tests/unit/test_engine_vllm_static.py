"""The vLLM engine's own helpers, without starting vLLM: RequestOutput -> Sample
conversion, seeds, GPU pinning. The engine itself runs for real (vLLM's CPU
build) in tests/integration/test_vllm_engine.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from actors import engine_vllm


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


def test_pin_gpu_narrows_the_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    engine_vllm.pin_gpu("cuda:1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    engine_vllm.pin_gpu("cuda:3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ValueError, match="only 1 GPU"):
        engine_vllm.pin_gpu("cuda:1")
