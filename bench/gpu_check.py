"""GPU check of the production path: one learner rank on CUDA, one actor (vLLM's
CUDA build by default) on a second GPU when there is one (the weight group then
broadcasts over NCCL) or on the learner's (gloo), weight sync after every step,
3 steps.

    python bench/gpu_check.py [--engine vllm|hf] [--model embedded|DIR] [--steps 3] [--actor-gpu K]

Run it where the project is installed with its GPU extra (the GPU image of
the Dockerfile), offline; it takes 2-5 minutes. It prints, per step, the
trainer–engine mismatch (mean |Δ log p| and k3 KL per token on samples made
with the learner's current weights), the broadcast time and the backend the
weight group chose, and exits non-zero on any failure: a role that crashes or
hangs, a missing step, a mismatch above --max-abs-diff, a backend other than
the one expected (NCCL across two GPUs; gloo on one: NCCL refuses two ranks on
one GPU). Writes bench/results/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

from tests.integration.helpers import free_ports  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="the actor's engine")
    p.add_argument("--model", default="embedded", help="'embedded' or a local HF directory")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds for the whole run")
    p.add_argument("--max-abs-diff", type=float, default=0.05,
                   help="fail above this mean |Δ log p| per token (fp32 on GPU: different kernels, ~1e-3)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.25, help="vLLM's share of the GPU")
    p.add_argument("--actor-gpu", type=int, default=-1,
                   help="the actor's GPU; -1: GPU 1 when two are visible (NCCL), else GPU 0 with the learner")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.json"))
    p.add_argument("--run-dir", default=str(REPO / "runs" / "gpu_check"), help="the roles' logs and step log")
    a = p.parse_args(argv)
    if a.steps < 1 or a.timeout <= 0 or not 0 < a.gpu_memory_utilization < 1 or a.actor_gpu < -1:
        p.error("--steps >= 1, --timeout > 0, 0 < --gpu-memory-utilization < 1 and --actor-gpu >= -1")
    return a


def commands(a: argparse.Namespace, run_dir: Path) -> tuple[list[str], list[str], int]:
    """The learner's and the actor's command lines, and the learner's metrics port."""
    router, pub, weights, lmetrics, ametrics = free_ports(5)
    learner = [sys.executable, "-m", "learner", "--gpus", "1", "--model", a.model, "--max-steps", str(a.steps),
               "--actors", "1", "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
               "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
               "--set", "groups_per_step=2", "--set", "sampling.n=4", "--set", "sampling.max_tokens=32",
               "--set", "max_staleness=0", "--set", "lr=1e-5", "--set", "linger_s=0"]
    actor = [sys.executable, "-m", "actors", "--n", "1", "--engine", a.engine, "--device", f"cuda:{actor_gpu(a)}",
             "--model", a.model, "--learner", f"tcp://127.0.0.1:{router}", "--metrics-port", str(ametrics),
             "--prompts-per-batch", "2", "--gpu-memory-utilization", str(a.gpu_memory_utilization),
             "--max-model-len", "1024"]
    return learner, actor, lmetrics


def actor_gpu(a: argparse.Namespace) -> int:
    """The actor's GPU (preflight resolves -1 from the GPUs visible; before it, GPU 0)."""
    return max(a.actor_gpu, 0)


def preflight(a: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible")
    count = torch.cuda.device_count()
    if a.actor_gpu == -1:
        a.actor_gpu = 1 if count >= 2 else 0
    if a.actor_gpu >= count:
        raise SystemExit(f"gpu_check: --actor-gpu {a.actor_gpu}, but {count} GPU(s) visible")
    if a.engine == "vllm":
        import vllm  # noqa: F401  (the GPU build must be installed: pip install -e '.[gpu]')


def run(a: argparse.Namespace) -> dict:
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    learner_cmd, actor_cmd, _ = commands(a, run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    llog, alog = run_dir / "learner.log", run_dir / "actor.log"
    t0 = time.monotonic()
    learner = subprocess.Popen(learner_cmd, cwd=REPO, env=env, stdout=open(llog, "w"), stderr=subprocess.STDOUT)
    actor = subprocess.Popen(actor_cmd, cwd=REPO, env=env, stdout=open(alog, "w"), stderr=subprocess.STDOUT)
    try:
        while learner.poll() is None or actor.poll() is None:
            if time.monotonic() - t0 > a.timeout:
                raise RuntimeError(f"timed out after {a.timeout:.0f} s")
            for name, p, log in (("learner", learner, llog), ("actor", actor, alog)):
                if p.poll() not in (None, 0):
                    raise RuntimeError(f"{name} exited {p.returncode}:\n{log.read_text()[-4000:]}")
            time.sleep(1)
    finally:
        for p in (learner, actor):
            if p.poll() is None:
                p.kill()
    rows = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    backend = re.search(r"weight group formed \((\w+)", llog.read_text())
    return {"engine": a.engine, "model": a.model, "actor_gpu": actor_gpu(a), "seconds": round(time.monotonic() - t0, 1),
            "backend": backend.group(1) if backend else None,
            "steps": [{k: r.get(k) for k in ("step", "loss", "behaviour_logp_abs_diff", "behaviour_mismatch_kl",
                                              "broadcast_seconds", "seconds")} for r in rows]}


def verdict(result: dict, a: argparse.Namespace) -> list[str]:
    """What is wrong with a finished run; empty when it passed."""
    problems = []
    if [s["step"] for s in result["steps"]] != list(range(1, a.steps + 1)):
        problems.append(f"steps logged: {[s['step'] for s in result['steps']]}")
    for s in result["steps"]:
        d = s["behaviour_logp_abs_diff"]
        if d is None or not d <= a.max_abs_diff:
            problems.append(f"step {s['step']}: mismatch {d} (limit {a.max_abs_diff})")
    expected = "nccl" if actor_gpu(a) != 0 else "gloo"  # the learner is on GPU 0
    if result["backend"] is None:
        problems.append("the weight group never formed")
    elif result["backend"] != expected:
        problems.append(f"weight group backend {result['backend']}, expected {expected}")
    return problems


def main(argv=None) -> int:
    a = parse_args(argv)
    preflight(a)
    try:
        result = run(a)
    except RuntimeError as e:
        print(f"gpu_check: FAILED: {e}", file=sys.stderr)
        return 1
    for s in result["steps"]:
        print(f"step {s['step']}: loss {s['loss']:.4f}  |Δ log p| {s['behaviour_logp_abs_diff']}  "
              f"KL {s['behaviour_mismatch_kl']}  broadcast {s['broadcast_seconds']} s  step {s['seconds']} s")
    print(f"weight group backend: {result['backend']}; wall {result['seconds']} s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    problems = verdict(result, a)
    for p in problems:
        print(f"gpu_check: FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
