"""Chaos benchmark with the embedded model: what a kill costs.

    python bench/chaos.py [--engine vllm|hf] [--prompts 48] [--max-tokens 32]

A learner (SmolLM2-135M, one epoch) and two actor launchers run; then one
launcher is killed with SIGKILL, and later the learner is killed with SIGKILL
and restarted with --resume auto. Reports the training rate (steps/min) before
and between the kills, the time from each kill to the next trained step, the
steps lost to the learner kill (trained after the last checkpoint, trained
again), and checks every prompt was trained exactly once. The baseline is the
same run's undisturbed phase. Writes bench/results/chaos.json.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.helpers import free_ports, metrics, start, wait_for  # noqa: E402

OUT = REPO / "bench" / "results" / "chaos.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/chaos.py", description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--run-dir", default=str(REPO / "runs" / "bench_chaos"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    router, pub, weights, lmetrics = free_ports(4)
    learner_args = ["learner", "--model", "embedded", "--actors", "4", "--max-steps", "0", "--resume", "never",
                    "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                    "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
                    "--checkpoint-every", "4", "--set", "epochs=1", "--set", f"num_prompts={a.prompts}",
                    "--set", "groups_per_step=2", "--set", "sampling.n=4",
                    "--set", f"sampling.max_tokens={a.max_tokens}", "--set", "max_staleness=2",
                    "--set", "broadcast_timeout_s=60", "--set", "actor_timeout_s=60", "--set", "linger_s=10",
                    "--set", "lr=1e-6"]
    actor_args = ["actors", "--n", "1", "--engine", a.engine, "--model", "embedded", "--learner",
                  f"tcp://127.0.0.1:{router}", "--metrics-port", "0", "--prompts-per-batch", "2",
                  "--reply-timeout-s", "20", "--kv-cache-gib", "0.5", "--max-model-len", "1024"]
    logs = {n: run_dir / f"{n}.log" for n in ("learner1", "learner2", "a", "b")}
    procs = {"learner1": start(learner_args, logs["learner1"], threads=1),
             "a": start(actor_args, logs["a"]), "b": start(actor_args, logs["b"])}
    steps = lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0)  # noqa: E731
    live = lambda *ns: ([procs[n] for n in ns], [logs[n] for n in ns])  # noqa: E731
    out: dict = {"engine": a.engine, "prompts": a.prompts}
    try:
        wait_for(lambda: steps() >= 2, 900, "first steps", *live("learner1", "a", "b"))
        t0, s0 = time.monotonic(), steps()
        wait_for(lambda: steps() >= s0 + 4, 900, "undisturbed steps", *live("learner1", "a", "b"))
        out["steps_per_min_before"] = 4 / (time.monotonic() - t0) * 60

        procs["b"].send_signal(signal.SIGKILL)
        t_kill, s1 = time.monotonic(), steps()
        wait_for(lambda: steps() >= s1 + 1, 900, "step after the actor kill", *live("learner1", "a"))
        out["actor_kill_to_next_step_s"] = time.monotonic() - t_kill
        t1, s2 = time.monotonic(), steps()
        wait_for(lambda: steps() >= s2 + 4, 900, "steps with one actor", *live("learner1", "a"))
        out["steps_per_min_one_actor"] = 4 / (time.monotonic() - t1) * 60

        trained = len((run_dir / "steps.jsonl").read_text().splitlines())
        procs["learner1"].send_signal(signal.SIGKILL)
        procs["learner1"].wait()
        t_kill = time.monotonic()
        procs["learner2"] = start([*learner_args[:learner_args.index("never")], "auto",
                                   *learner_args[learner_args.index("never") + 1:]], logs["learner2"], threads=1)
        resumed = wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_resumed_from_step"), 900,
                           "resume", *live("learner2", "a"))
        wait_for(lambda: steps() >= 1, 900, "step after the learner kill", *live("learner2", "a"))
        out["learner_kill_to_next_step_s"] = time.monotonic() - t_kill
        out["steps_lost_to_learner_kill"] = trained - int(resumed)
        assert procs["learner2"].wait(timeout=1800) == 0
        assert procs["a"].wait(timeout=120) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    rows = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    ids = sorted(i for r in rows for i in r["prompt_ids"])
    out["every_prompt_exactly_once"] = ids == list(range(a.prompts))
    out["steps"] = len(rows)
    for k, v in out.items():
        print(f"{k:32s} {v:.2f}" if isinstance(v, float) else f"{k:32s} {v}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    return 0 if out["every_prompt_exactly_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
