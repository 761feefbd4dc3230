"""Actor engines side by side on the embedded SmolLM2-135M (CPU): the vLLM engine
(vLLM's CPU build) against the HF engine (transformers), same prompts, same sampling.

    python bench/engines.py [--rounds 3] [--prompts 8] [--n 4] [--max-tokens 48]

Reports per engine the median generation throughput (tokens/s over ``rounds``
batches after a warm-up), the trainer–engine mismatch of its recorded log-probs
against the learner's (mean |Δ log p| and k3 KL per token), and for vLLM the
median time of one weight update (gloo broadcast from a learner thread into
vLLM's worker, reload included). Prints the vLLM/HF ratio and writes
bench/results/engines.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common.protocol import Sampling

OUT = Path(__file__).resolve().parent / "results" / "engines.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/engines.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--weight-updates", type=int, default=3)
    return p.parse_args(argv)


def prompts(k: int) -> list[np.ndarray]:
    from common.data import load_tasks
    from common.models import encode_prompt, load_tokenizer

    tok = load_tokenizer("embedded")
    return [np.asarray(encode_prompt(tok, t.prompt), np.int32) for t in load_tasks("arithmetic", n=k, seed=1)]


def mismatch(model, ps: list[np.ndarray], groups, temperature: float) -> tuple[float, float]:
    from common.protocol import Completion
    from learner.buffer import Group
    from learner.diagnostics import behaviour_mismatch
    from learner.model import reference_logprobs
    from learner.trainer import collate

    gs = [Group(i, p, [Completion(s.tokens, s.logprobs, s.finish_reason, 0.0, 0) for s in g], "x")
          for i, (p, g) in enumerate(zip(ps, groups))]
    batch = collate(gs, 0)
    mine = reference_logprobs(model, batch, temperature)
    abs_sum, k3_sum, n = behaviour_mismatch(mine, batch.old_logp, batch.mask)
    return float(abs_sum / n), float(k3_sum / n)


def throughput(engine, ps, sampling, rounds: int) -> tuple[float, list]:
    engine.generate(ps, sampling, seed=0)  # warm-up
    rates, groups = [], None
    for r in range(rounds):
        t0 = time.perf_counter()
        groups = engine.generate(ps, sampling, seed=r + 1)
        rates.append(sum(len(s.tokens) for g in groups for s in g) / (time.perf_counter() - t0))
    return statistics.median(rates), groups


def weight_updates(engine, model, k: int) -> list[float]:
    """Seconds per update: the learner's broadcast of every weight and vLLM's reload of it."""
    import socket

    from common.weight_sync import WeightGroup, WeightGroupSpec, make_manifest

    named = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = WeightGroupSpec("127.0.0.1", port, 2, 0, "gloo", timeout_s=300)
    ready = threading.Event()

    def learner():
        g = WeightGroup(spec)
        ready.set()
        for _ in range(k):
            g.broadcast(named)
        g.close()

    t = threading.Thread(target=learner)
    t.start()
    engine.join_weight_group(spec.for_rank(1), make_manifest(named))
    ready.wait()
    seconds = []
    for _ in range(k):
        t0 = time.perf_counter()
        engine.receive_weights()
        seconds.append(time.perf_counter() - t0)
    t.join()
    return seconds


def main(argv=None) -> int:
    a = parse_args(argv)
    from actors.engine_hf import HFEngine
    from actors.engine_vllm import VLLMEngine
    from common.models import load_model

    torch.set_num_threads(2)
    ps = prompts(a.prompts)
    sampling = Sampling(a.n, 1.0, 1.0, a.max_tokens)
    model = load_model("embedded").eval()
    result = {"prompts": a.prompts, "n": a.n, "max_tokens": a.max_tokens, "rounds": a.rounds}

    hf = HFEngine("embedded", device="cpu", dtype="float32", seed=0)
    rate, groups = throughput(hf, ps, sampling, a.rounds)
    result["hf"] = {"tokens_per_s": rate, "mismatch": mismatch(model, ps, groups, 1.0)}
    hf.close()
    del hf

    t0 = time.perf_counter()
    vllm = VLLMEngine("embedded", device="cpu", dtype="float32", seed=0, gpu_memory_utilization=0.9,
                      max_model_len=1024, kv_cache_gib=1.0)
    start_s = time.perf_counter() - t0
    rate, groups = throughput(vllm, ps, sampling, a.rounds)
    result["vllm"] = {"tokens_per_s": rate, "mismatch": mismatch(model, ps, groups, 1.0), "start_s": start_s,
                      "weight_update_s": weight_updates(vllm, model, a.weight_updates)}
    vllm.close()

    ratio = result["vllm"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
    result["vllm_over_hf"] = ratio
    for name in ("hf", "vllm"):
        r = result[name]
        print(f"{name:5s} {r['tokens_per_s']:7.1f} tokens/s   |Δ log p| {r['mismatch'][0]:.2e}   "
              f"KL {r['mismatch'][1]:.2e}")
    w = result["vllm"]["weight_update_s"]
    print(f"vLLM start {start_s:.1f} s; weight update (538 MB, gloo + reload) median {statistics.median(w):.2f} s")
    print(f"vLLM / HF throughput: {ratio:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
