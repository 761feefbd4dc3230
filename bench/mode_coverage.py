"""Mode coverage: does FlowRL keep more of the correct answers alive than GRPO?

    .venv/bin/python bench/mode_coverage.py                      # default size: well under an hour on 2 cores
    .venv/bin/python bench/mode_coverage.py --steps 200 --samples 16 --tasks many_answers

For each task (default: ``many_answers``, questions with many equally correct
integer answers, then ``arithmetic``, one answer each) it evaluates the
embedded model as it starts ("base"), then for each method (FlowRL, GRPO)
trains it from that same model with the same seed and the same number of
samples -- a real ``python -m learner`` plus one ``python -m actors`` (one actor
is faster than two on 2 cores) -- and evaluates the final checkpoint with
``python -m learner.eval`` on the training prompts. It prints one table (method,
task, steps, mean score, distinct correct answers per prompt, answer entropy,
wall time) and writes the rows to ``bench/results/mode_coverage.json`` after
every run, so an interrupted bench keeps what it measured.

A subprocess that fails makes the bench fail at once with the tail of its log.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

from tests.integration.helpers import free_ports  # noqa: E402


class SubprocessFailed(Exception):
    """A learner, actor or eval process exited non-zero or hung; the message has its log tail."""


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def failure(what: str, proc: subprocess.Popen, log: Path) -> SubprocessFailed:
    return SubprocessFailed(f"{what} ({' '.join(proc.args[1:4])}...) exited {proc.returncode}; "
                            f"log {log}:\n{tail(log)}")


def learner_args(a, method: str, task: str, run_dir: Path, ports: list[int]) -> list[str]:
    sets = {"algo.algorithm": method, "groups_per_step": a.groups_per_step, "sampling.n": a.n,
            "sampling.max_tokens": a.max_tokens, "lr": a.lr, "seed": a.seed, "task_seed": a.seed,
            "num_prompts": a.num_prompts, "torch_threads": a.threads, "micro_batch_seqs": a.n}
    out = ["learner", "--model", a.model, "--tasks", task, "--max-steps", str(a.steps), "--actors", "1",
           "--bind", f"tcp://127.0.0.1:{ports[0]}", "--pub-bind", f"tcp://127.0.0.1:{ports[1]}",
           "--weight-port", str(ports[2]), "--metrics-port", str(ports[3]), "--run-dir", str(run_dir)]
    for key, value in list(sets.items()) + [kv.split("=", 1) for kv in a.learner_set]:
        out += ["--set", f"{key}={value}"]
    return out


def train(a, method: str, task: str, run_dir: Path) -> float:
    """One learner + one actor until the learner's final checkpoint; returns wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(5)
    t0 = time.perf_counter()
    llog, alog = run_dir / "learner.log", run_dir / "actors.log"
    learner = start(learner_args(a, method, task, run_dir, ports), llog)
    actors = start(["actors", "--n", "1", "--model", a.model, "--learner", f"tcp://127.0.0.1:{ports[0]}",
                    "--metrics-port", str(ports[4]), "--seed", str(a.seed), "--torch-threads", str(a.threads),
                    "--prompts-per-batch", str(a.groups_per_step), "--connect-timeout-s", "300"], alog)
    try:
        while learner.poll() is None:
            if actors.poll() not in (None, 0):
                raise failure("actors", actors, alog)
            if actors.poll() == 0:  # told "shutdown": the learner is closing (or crashing) -- its exit decides
                _wait(learner, 120)
                break
            if time.perf_counter() - t0 > a.run_timeout:
                raise SubprocessFailed(f"{method}/{task} ran past --run-timeout {a.run_timeout}s; learner log:\n"
                                       f"{tail(llog)}\nactor log:\n{tail(alog)}")
            time.sleep(2)
        if learner.returncode != 0:
            raise failure("learner", learner, llog)
        try:
            actors.wait(120)  # the learner said shutdown; the actor should follow promptly
        except subprocess.TimeoutExpired:
            raise SubprocessFailed(f"actors did not exit 120 s after the learner finished:\n{tail(alog)}") from None
        if actors.returncode != 0:
            raise failure("actors", actors, alog)
    finally:
        stop(learner)
        stop(actors)
    return time.perf_counter() - t0


def _wait(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass  # still running: the caller stops it and reports


def materialize_embedded(out: Path) -> str:
    """The embedded GGUF model saved once as a plain HF directory that every run loads.

    Why: a model loaded from GGUF keeps its ``hf_quantizer`` and transformers refuses
    ``save_pretrained`` on it, so a learner started with ``--model embedded`` cannot
    write its final checkpoint; the weights are already dequantised to float32, so
    dropping the quantizer loses nothing. It also spares each process the GGUF decode.
    """
    from common.models import EMBEDDED, load_model, load_tokenizer

    if (out / "config.json").is_file():
        return str(out)
    model = load_model(EMBEDDED)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    load_tokenizer(EMBEDDED).save_pretrained(out)
    return str(out)


def evaluate(a, checkpoint: str, task: str, out: Path) -> dict:
    log = out.with_suffix(".log")
    proc = start(["learner.eval", "--checkpoint", checkpoint, "--tasks", task, "--num-prompts", str(a.eval_prompts),
                  "--task-seed", str(a.seed), "--samples", str(a.samples), "--max-tokens", str(a.max_tokens),
                  "--seed", str(a.seed), "--threads", str(a.eval_threads), "--out", str(out)], log)
    if proc.wait() != 0:
        raise failure("eval", proc, log)
    return json.loads(out.read_text())["tasks"][task]


def train_log(run_dir: Path) -> list[dict]:
    path = run_dir / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def row(method: str, task: str, steps: list[dict], ev: dict, train_s: float, eval_s: float, samples: int) -> dict:
    last = steps[-5:]
    return {"method": method, "task": task, "steps": len(steps),
            "train_score_first5": _mean([s["score_mean"] for s in steps[:5]]),
            "train_score_last5": _mean([s["score_mean"] for s in last]),
            "train_distinct_ratio_last5": _mean([s["distinct_ratio"] for s in last]),
            "mean_score": ev["mean_accuracy"], f"pass@{samples}": ev.get(f"pass@{samples}"),
            "distinct_correct": ev["distinct_correct"], "answer_entropy": ev["answer_entropy"],
            "no_answer": ev["no_answer"], "distinct_2": ev["distinct_2"], "mean_tokens": ev["mean_tokens"],
            "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
            "per_prompt_answers": [p["answers"] for p in ev["per_prompt"]]}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    cols = ["method", "task", "steps", "mean score", "distinct correct/prompt", "answer entropy",
            "train score last5", "train wall s", "eval wall s"]
    body = [[r["method"], r["task"], str(r["steps"]), _fmt(r["mean_score"], ".3f"), _fmt(r["distinct_correct"], ".2f"),
             _fmt(r["answer_entropy"], ".2f"), _fmt(r["train_score_last5"], ".3f"), _fmt(r["train_wall_s"], ".0f"),
             _fmt(r["eval_wall_s"], ".0f")] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in [cols] + body)


def run_one(a, method: str, task: str, work: Path) -> dict:
    run_dir = work / f"{task}-{method}"
    train_s = 0.0
    checkpoint = a.model
    if method != "base":
        train_s = train(a, method, task, run_dir)
        checkpoint = str(run_dir / "checkpoint-final")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ev = evaluate(a, checkpoint, task, run_dir / "eval.json")
    r = row(method, task, train_log(run_dir), ev, train_s, time.perf_counter() - t0, a.samples)
    if method != "base" and not a.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoint-final")  # 0.5 GB each; the eval JSON and logs stay
    return r


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per training run")
    p.add_argument("--samples", type=int, default=16, help="eval completions per prompt")
    p.add_argument("--tasks", nargs="+", default=["many_answers", "arithmetic"])
    p.add_argument("--methods", nargs="+", default=["flowrl", "grpo"])
    p.add_argument("--no-base", action="store_true", help="skip evaluating the untrained model")
    p.add_argument("--eval-prompts", type=int, default=8, help="training prompts evaluated per task")
    p.add_argument("--num-prompts", type=int, default=64, help="prompts the learner draws from the task")
    p.add_argument("--groups-per-step", type=int, default=2)
    p.add_argument("--n", type=int, default=8, help="completions per prompt in training")
    p.add_argument("--max-tokens", type=int, default=48, help="completion limit in training and eval")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0, help="learner, actor, task and eval seed (same for every method)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the learner and of the actor each")
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--learner-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra learner overrides, e.g. algo.beta=10")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds one training run may take")
    p.add_argument("--work-dir", help="run dirs and logs (default: a new temporary directory)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "mode_coverage.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="mode_coverage-"))
    print(f"mode_coverage: work dir {work}", flush=True)
    t0, load0 = time.perf_counter(), os.getloadavg()
    a.model = materialize_embedded(work / "embedded-hf")
    methods = ([] if a.no_base else ["base"]) + a.methods
    rows: list[dict] = []
    for task in a.tasks:
        for method in methods:
            print(f"mode_coverage: {method} on {task} ...", flush=True)
            try:
                rows.append(run_one(a, method, task, work))
            except SubprocessFailed as e:
                print(f"mode_coverage: FAILED: {e}", file=sys.stderr)
                return 1
            result = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "work_dir", "model")},
                      "cpus": os.cpu_count(), "loadavg_at_start": load0, "loadavg_at_end": os.getloadavg(),
                      "total_wall_s": round(time.perf_counter() - t0, 1), "rows": rows}
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(result, indent=1))
            print(table(rows[-1:]).splitlines()[1], flush=True)
    print(table(rows))
    print(f"total wall {time.perf_counter() - t0:.0f} s; results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
