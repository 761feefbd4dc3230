"""What the actor loop needs from a generation engine, and how one is chosen.

Two engines implement it: ``hf`` (transformers; CPU or GPU; tests and the
embedded default) in actors/engine_hf.py and ``vllm`` (production) in
actors/engine_vllm.py, imported only when chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.protocol import Sampling
from common.weight_sync import WeightGroupSpec


@dataclass
class Sample:
    tokens: np.ndarray
    """int32 completion token ids, ending with EOS when finish_reason is "stop"."""
    logprobs: np.ndarray
    """float32 log-prob of each sampled token under softmax(logits / temperature),
    i.e. before top-p truncation, which is what the learner recomputes."""
    finish_reason: str
    """"stop" (EOS sampled) or "length" (max_tokens reached)."""


class Engine(Protocol):
    def generate(self, prompts: list[np.ndarray], sampling: Sampling, seed: int) -> list[list[Sample]]:
        """``sampling.n`` samples for each prompt (int32 token ids), in prompt order."""

    def join_weight_group(self, spec: WeightGroupSpec, manifest: list) -> None:
        """Join the learner's broadcast group (blocks until every member has joined);
        the member posts the GPU it holds the weights on, so the learner can pick the backend."""

    def leave_weight_group(self) -> None:
        """Leave the current group (it is re-formed when membership changes)."""

    def receive_weights(self) -> int:
        """Take part in one broadcast from learner rank 0 and load the weights; returns bytes."""

    def close(self) -> None:
        ...


def build_engine(cfg, device: str, seed: int) -> Engine:
    """The engine ``cfg.engine`` names (an ``ActorConfig``), on ``device``."""
    if cfg.engine == "hf":
        from actors.engine_hf import HFEngine
        return HFEngine(cfg.model, device=device, dtype=cfg.dtype, seed=seed)
    if cfg.engine == "vllm":
        from actors.engine_vllm import VLLMEngine  # heavy: imported only when chosen
        return VLLMEngine(cfg.model, device=device, dtype=cfg.dtype, seed=seed,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
                          kv_cache_gib=cfg.kv_cache_gib)
    raise ValueError(f"engine must be 'hf' or 'vllm', got {cfg.engine!r}")
