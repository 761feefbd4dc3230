"""vLLM generation engine: the production path of the actor (DESIGN.md sections 1, 7).

Built by ``actors.engine.build_engine("vllm", model, dtype=..., seed=...)``,
which imports this module only when the vllm engine is chosen; vllm itself is
imported lazily inside the methods, so the conversion helpers here can be
unit-tested on a machine without vLLM (tests/unit/test_engine_vllm_static.py).

One ``vllm.LLM`` (V1 engine, one GPU) per actor. Weight updates go through a
worker extension (actors/vllm_worker.py) that vLLM mixes into its worker;
``join_weight_group`` / ``receive_weights`` are ``LLM.collective_rpc`` calls
into it, the pattern of vLLM's examples/offline_inference/rlhf.py.

Behaviour log-probs. The learner recomputes log softmax(logits / T) over the
whole vocabulary. vLLM's ``logprobs_mode`` offers:
  raw_logprobs        log_softmax(logits): before temperature (exact only if T == 1);
  processed_logprobs  log_softmax of the logits after penalties, temperature
                      AND top-k/top-p masking, i.e. of the truncated,
                      renormalised distribution (vllm/v1/sample/sampler.py,
                      ops/topk_topp_sampler.py; vLLM PR #22387, in >= 0.10.2).
We use processed_logprobs: it is exact when top_p == 1 (no top-k, min-p or
penalties are set here). With top_p < 1 every recorded value is
log p_T(y) - log M_t, where M_t >= top_p is the probability mass top-p kept at
that step, so it overstates the learner's value by up to -log(top_p) per
token; the engine warns once. No mode gives the pre-truncation value.
"""
from __future__ import annotations

import logging

import numpy as np

from actors.engine import Sample
from common.protocol import Sampling
from common.weight_sync import WeightGroupSpec

log = logging.getLogger(__name__)

WORKER_EXTENSION = "actors.vllm_worker.WeightReceiverExtension"
LOGPROBS_MODE = "processed_logprobs"
FINISH_REASONS = ("stop", "length")


def _to_samples(request_output) -> list[Sample]:
    """One vLLM ``RequestOutput`` -> its completions as ``Sample``s.

    Requests ask for ``logprobs=0``: vLLM then returns, per generated position,
    a {token_id: Logprob} map holding just the sampled token (list of dicts,
    or FlatLogprobs, which indexes the same way).
    """
    samples = []
    for out in request_output.outputs:
        if out.finish_reason not in FINISH_REASONS:
            # "abort"/"error" or unfinished: nothing we may train on.
            raise RuntimeError(f"vLLM completion {out.index} finished with {out.finish_reason!r}")
        tokens = np.asarray(out.token_ids, dtype=np.int32)
        if out.logprobs is None or len(out.logprobs) != len(tokens):
            raise RuntimeError(f"vLLM returned {None if out.logprobs is None else len(out.logprobs)} "
                               f"log-prob positions for {len(tokens)} tokens")
        logprobs = np.array([pos[tok].logprob for pos, tok in zip(out.logprobs, out.token_ids)],
                            dtype=np.float32)
        if not np.all(np.isfinite(logprobs)):
            raise RuntimeError("vLLM returned a non-finite log-prob for a sampled token")
        # log_softmax can round a certain token to a hair above 0; the wire
        # protocol rejects positive log-probs.
        samples.append(Sample(tokens=tokens, logprobs=np.minimum(logprobs, 0.0),
                              finish_reason=out.finish_reason))
    return samples


def _request_seeds(seed: int, n_prompts: int, n: int) -> list[int]:
    """Per-request seeds for one ``generate`` call.

    vLLM seeds child j of an n-sample request with ``seed + j``
    (vllm/v1/engine/parallel_sampling.py), so requests are spaced n apart so
    that no two completions of a call share a random stream. The base is
    hashed from ``seed`` so consecutive calls do not overlap either.
    """
    base = int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])
    return [base + i * n for i in range(n_prompts)]


def _single(results: list):
    """collective_rpc returns one result per worker; this engine runs exactly one."""
    if len(results) != 1:
        raise RuntimeError(f"expected one vLLM worker, got {len(results)} (tensor parallel is not supported)")
    return results[0]


class VLLMEngine:
    def __init__(self, model: str, *, dtype: str, seed: int, **engine_kwargs):
        """``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``)."""
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if engine_kwargs.get(key, 1) != 1:
                # The weight group gives each actor exactly one receiving rank;
                # sharded receivers would need one rank per vLLM worker.
                raise ValueError(f"engine vllm supports one GPU per actor; {key}={engine_kwargs[key]} "
                                 "is not supported (run more actors instead)")
        from vllm import LLM  # heavy and GPU-only: imported only when this engine is built

        self._llm = LLM(model=model, dtype=dtype, seed=seed,
                        worker_extension_cls=WORKER_EXTENSION,
                        logprobs_mode=LOGPROBS_MODE,
                        # n samples of a prompt share its prefill; the cache is
                        # reset after every weight update (see receive_weights).
                        enable_prefix_caching=True,
                        **engine_kwargs)
        self._joined = False
        self._warned_top_p = False

    def generate(self, prompts: list[np.ndarray], sampling: Sampling, seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        if sampling.top_p < 1.0 and not self._warned_top_p:
            log.warning("top_p=%s < 1: vLLM's behaviour log-probs are those of the top-p truncated "
                        "distribution, not of softmax(logits/T) that the learner recomputes",
                        sampling.top_p)
            self._warned_top_p = True
        params = [SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens,
                                 logprobs=0,  # the sampled token's log-prob only
                                 seed=s,
                                 detokenize=False)  # token ids are all the actor needs
                  for s in _request_seeds(seed, len(prompts), sampling.n)]
        requests = [{"prompt_token_ids": np.asarray(p, dtype=np.int64).tolist()} for p in prompts]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        groups = [_to_samples(o) for o in outputs]  # LLM.generate keeps prompt order
        for g in groups:
            if len(g) != sampling.n:
                raise RuntimeError(f"vLLM returned {len(g)} completions, expected n={sampling.n}")
        return groups

    def join_weight_group(self, spec: WeightGroupSpec, manifest: list) -> None:
        # Blocks until every member has joined, like WeightGroup itself.
        _single(self._llm.collective_rpc("join_weight_group", args=(spec.as_dict(), manifest)))
        self._joined = True

    def receive_weights(self) -> int:
        if not self._joined:
            raise RuntimeError("receive_weights called before join_weight_group")
        received = int(_single(self._llm.collective_rpc("receive_weights")))
        # Cached prefixes hold KV computed with the old weights; reusing them
        # would mix policies inside one completion.
        if self._llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")
        return received

    def close(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            if self._joined:
                self._joined = False
                _single(llm.collective_rpc("close_weight_group"))
        finally:
            # LLM.shutdown() exists only in recent releases; the engine core client
            # (which owns the worker process) has shutdown() in every V1 release.
            shutdown = getattr(llm, "shutdown", None) or llm.llm_engine.engine_core.shutdown
            shutdown()
