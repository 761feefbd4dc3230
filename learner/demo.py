"""The demo: FlowRL on the embedded SmolLM2-135M-Instruct and a built-in
arithmetic task, on CPU, with the learner and a vLLM actor as separate
processes (the same commands a cluster runs). It measures the policy on
held-out prompts before and after training, shows a live table, serves the
learner's /metrics, and ends with a PNG and ``summary.json``.

    python -m learner.demo [--seed 0] [--steps 10] [--out runs/demo]

It launches ``python -m learner.eval``, ``python -m learner`` and
``python -m actors`` as subprocesses and only reads what they publish
(eval JSON, steps.jsonl, /metrics); of the project it imports only the held-out
split (common.data) and the standard-error helpers of learner.eval.

The default settings (task arithmetic_small, 10 steps of 8 prompts × 4
samples, temperature 0.6, lr 1e-5, β = 15, no gradient clip, 128 held-out
prompts × 4 samples) and what was learnt choosing them are in README.md,
"The demo".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("many_answers", "arithmetic_small", "arithmetic")
TRAIN_PROMPTS = 64
TRAIN_TASK_SEED = 0
HELD_OUT_SEED = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m learner.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="optimizer steps (about 5 minutes on 2 idle cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, sampling and log Z's initial weights")
    p.add_argument("--model", default="embedded", help="model directory or 'embedded'")
    p.add_argument("--out", default="runs/demo", help="run directory (steps.jsonl, logs, plot, checkpoint)")
    p.add_argument("--metrics-port", type=int, default=9100, help="learner /metrics port (the actor's is 100 above)")
    p.add_argument("--port", type=int, default=5555, help="learner ROUTER port (PUB is port+1)")
    p.add_argument("--task", choices=TASKS, default="arithmetic_small", help="built-in task to train and evaluate on")
    p.add_argument("--groups", type=int, default=8, help="prompt groups per step")
    p.add_argument("--n", type=int, default=4, help="completions per prompt (group size)")
    p.add_argument("--max-tokens", type=int, default=32, help="completion length limit")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature, training and held-out")
    p.add_argument("--lr", type=float, default=1e-5, help="policy learning rate")
    p.add_argument("--beta", type=float, default=15.0, help="FlowRL reward scale β")
    p.add_argument("--grad-clip", type=float, default=0.0,
                   help="gradient norm clip, 0: none (AdamW sets the step size; a clip would give a step "
                        "whose groups carry no reward signal the same length as one whose groups do)")
    p.add_argument("--eval-prompts", type=int, default=128, help="held-out prompts")
    p.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluations")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other learner setting, e.g. --set grad_clip=10 (passed to python -m learner)")
    a = p.parse_args(argv)
    if min(a.steps, a.max_tokens, a.groups, a.eval_prompts, a.eval_samples) < 1 or a.n < 2:
        p.error("--steps, --max-tokens, --groups, --eval-prompts, --eval-samples must be >= 1, --n >= 2")
    if a.grad_clip < 0:
        p.error("--grad-clip must be >= 0 (0: none)")
    return a


def _env() -> dict:
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def write_held_out(a: argparse.Namespace, out: Path) -> Path:
    from common.data import held_out

    items = held_out(a.task, n=a.eval_prompts, seed=HELD_OUT_SEED, train_n=TRAIN_PROMPTS,
                     train_seed=TRAIN_TASK_SEED)
    path = out / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": t.prompt, "answer": t.reference, "kind": t.kind}) + "\n"
                            for t in items))
    return path


def evaluate(a: argparse.Namespace, checkpoint: str, tasks: Path, out: Path, name: str) -> dict:
    """Held-out accuracy of ``checkpoint`` through ``python -m learner.eval`` with vLLM."""
    path = out / f"{name}.json"
    cmd = [sys.executable, "-m", "learner.eval", "--engine", "vllm", "--checkpoint", checkpoint,
           "--tasks", str(tasks), "--samples", str(a.eval_samples), "--temperature", str(a.temperature),
           "--top-p", "1", "--max-tokens", str(a.max_tokens), "--batch-prompts", str(a.eval_prompts),
           "--seed", str(a.seed), "--out", str(path)]
    with open(out / f"{name}.log", "w") as log:
        if subprocess.run(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"demo: evaluation {name} failed; see {out / (name + '.log')}")
    return json.loads(path.read_text())["tasks"][str(tasks)]


def learner_settings(a: argparse.Namespace) -> list[str]:
    """The ``--set`` values the demo gives ``python -m learner``; the user's ``--set`` come last and win."""
    return [f"groups_per_step={a.groups}", f"sampling.n={a.n}", f"sampling.max_tokens={a.max_tokens}",
            f"sampling.temperature={a.temperature}", f"micro_batch_seqs={a.n}", f"lr={a.lr}",
            f"grad_clip={a.grad_clip}", "algo.log_z_lr=1e-3", f"algo.beta={a.beta}", "max_staleness=1", "linger_s=2",
            f"seed={a.seed}", f"num_prompts={TRAIN_PROMPTS}", f"task_seed={TRAIN_TASK_SEED}", *a.set]


def launch(a: argparse.Namespace, out: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    env = _env()
    sets = learner_settings(a)
    learner = subprocess.Popen(
        [sys.executable, "-m", "learner", "--gpus", "0", "--model", a.model, "--max-steps", str(a.steps),
         "--actors", "1", "--bind", f"tcp://127.0.0.1:{a.port}", "--pub-bind", f"tcp://127.0.0.1:{a.port + 1}",
         "--metrics-port", str(a.metrics_port), "--run-dir", str(out), "--tasks", a.task,
         *[x for s in sets for x in ("--set", s)]],
        env=env, stdout=open(out / "learner.log", "w"), stderr=subprocess.STDOUT)
    # One vLLM actor generates a whole step's groups in one batch while the learner trains
    # on the previous one (max_staleness 1); a second would only split the same 2 cores.
    actors = subprocess.Popen(
        [sys.executable, "-m", "actors", "--n", "1", "--engine", "vllm", "--kv-cache-gib", "0.5",
         "--max-model-len", "512", "--model", a.model, "--learner", f"tcp://127.0.0.1:{a.port}",
         "--metrics-port", str(a.metrics_port + 100), "--prompts-per-batch", str(a.groups), "--seed", str(a.seed)],
        env=env, stdout=open(out / "actors.log", "w"), stderr=subprocess.STDOUT)
    return learner, actors


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


WINDOW = 5  # steps in the moving average of the training score: the first and the last half of the default run


def _fmt_eval(e: dict | None) -> str:
    return "pending" if e is None else f"{e['mean']:.3f} ± {e['se']:.3f}"


def table(rows: list[dict], a: argparse.Namespace, elapsed: float, before: dict | None):
    from rich.table import Table

    t = Table(title=f"FlowRL demo, seed {a.seed}: step {len(rows)}/{a.steps}, {elapsed:.0f}s of training; held-out "
                    f"before {_fmt_eval(before)}; metrics: http://127.0.0.1:{a.metrics_port}/metrics")
    # Ten narrow columns so that an 80-column terminal shows them whole; steps.jsonl has the rest.
    for col in ("step", "score", f"avg{WINDOW}", "loss", "δ std", "log Z", "|grad|", "clip", "0-var", "div"):
        t.add_column(col, justify="right")
    avg = moving_average([r["score_mean"] for r in rows], WINDOW)
    for r, m in list(zip(rows, avg))[-15:]:
        t.add_row(str(r["step"]), f"{r['score_mean']:.2f}", f"{m:.2f}", f"{r['loss']:.0f}",
                  f"{r.get('delta_std', 0):.1f}", f"{r.get('log_z_mean', 0):.1f}", f"{r['grad_norm']:.0f}",
                  "yes" if r["grad_clipped"] else "no", f"{r['zero_variance_groups']:.2f}",
                  f"{r['distinct_ratio']:.2f}")
    return t


def plot(rows: list[dict], before: dict | None, after: dict | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    scores = [r["score_mean"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    ax1.plot(steps, scores, marker=".", alpha=0.35, label="training batch score")
    ax1.plot(steps, moving_average(scores, WINDOW), lw=2, label=f"moving average ({WINDOW} steps)")
    for e, x, label, color in ((before, 0, "held-out before", "tab:red"),
                               (after, steps[-1] if steps else 1, "held-out after", "tab:green")):
        if e is not None:
            ax1.errorbar([x], [e["mean"]], yerr=[2 * e["se"]], fmt="s", color=color, capsize=4,
                         label=f"{label}: {e['mean']:.3f} ± {e['se']:.3f}")
    ax1.set(title="score (held-out: ±2 standard errors)", xlabel="step", ylim=(-0.05, 1.05))
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r["distinct_ratio"] for r in rows], marker="o", label="distinct completions / n")
    ax2.plot(steps, [r["distinct_2"] for r in rows], marker="s", label="distinct-2")
    ax2.set(title="diversity", xlabel="step", ylim=(-0.05, 1.05))
    ax2.legend(fontsize=8)
    ax3.plot(steps, [r["grad_norm"] for r in rows], label="gradient norm (before clip)")
    ax3.plot(steps, [r.get("delta_std", float("nan")) for r in rows], label="δ std")
    ax3.set(title="why it moves", xlabel="step", yscale="log")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summarize_eval(task: dict) -> tuple[dict, list[float]]:
    from learner.eval import mean_and_se

    accs = [p["accuracy"] for p in task["per_prompt"]]
    mean, se = mean_and_se(accs)
    return {"mean": mean, "se": se}, accs


def main(argv=None) -> int:
    from rich.live import Live

    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.jsonl").unlink(missing_ok=True)
    t_start = time.monotonic()
    before = after = None
    if not a.no_eval:
        tasks = write_held_out(a, out)
        print(f"demo: held-out evaluation of the initial policy ({a.eval_prompts} prompts never trained on, "
              f"{a.eval_samples} samples each; log: {out / 'eval_before.log'}) ...", flush=True)
        before, acc_before = summarize_eval(evaluate(a, a.model, tasks, out, "eval_before"))
        print(f"demo: held-out before training: {_fmt_eval(before)}", flush=True)
    learner, actors = launch(a, out)
    t_first = None  # training time runs from the first step: start-up (model loads, vLLM) is set-up
    try:
        with Live(table([], a, 0, before), refresh_per_second=2) as live:
            while learner.poll() is None:
                if actors.poll() not in (None, 0):
                    raise SystemExit(f"demo: actors failed (exit {actors.returncode}); see {out / 'actors.log'}")
                rows = read_rows(out / "steps.jsonl")
                if rows and t_first is None:
                    t_first = time.monotonic() - rows[0]["seconds"]
                live.update(table(rows, a, time.monotonic() - t_first if t_first else 0, before))
                time.sleep(1)
        if learner.returncode != 0:
            raise SystemExit(f"demo: learner failed (exit {learner.returncode}); see {out / 'learner.log'}")
        actors.wait(timeout=60)
    finally:
        for p in (learner, actors):
            if p.poll() is None:
                p.terminate()
        for p in (learner, actors):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # an actor stuck in vLLM's shutdown must not outlive the demo
                p.kill()
    rows = read_rows(out / "steps.jsonl")
    t_end = time.monotonic()
    train_s = t_end - (t_first if t_first is not None else t_start)
    summary = {"seed": a.seed, "steps": len(rows), "seconds": round(train_s, 1),
               "settings": {k: v for k, v in vars(a).items() if k not in ("out",)}}
    avg = moving_average([r["score_mean"] for r in rows], WINDOW)
    summary["train_score_avg_first"], summary["train_score_avg_last"] = avg[min(WINDOW, len(avg)) - 1], avg[-1]
    if not a.no_eval:
        print("demo: held-out evaluation of the trained policy ...", flush=True)
        after, acc_after = summarize_eval(evaluate(a, str(out / "checkpoint-final"), tasks, out, "eval_after"))
        from learner.eval import paired_gain
        gain, gain_se = paired_gain(acc_before, acc_after)
        summary.update(eval_before=before["mean"], eval_before_se=before["se"], eval_after=after["mean"],
                       eval_after_se=after["se"], gain=gain, gain_se=gain_se, eval_prompts=a.eval_prompts,
                       eval_samples=a.eval_samples)
    summary["total_seconds"] = round(time.monotonic() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, before, after, out / "demo.png")
    held = "" if a.no_eval else (f"held-out {before['mean']:.3f} ± {before['se']:.3f} -> {after['mean']:.3f} ± "
                                 f"{after['se']:.3f} (gain {summary['gain']:+.3f} ± {summary['gain_se']:.3f}); ")
    print(f"demo finished: {len(rows)} steps in {train_s:.0f}s of training ({summary['total_seconds']:.0f}s in all); "
          f"{held}training score, {WINDOW}-step average, {summary['train_score_avg_first']:.3f} -> "
          f"{summary['train_score_avg_last']:.3f}; plot: {out / 'demo.png'}; summary: {out / 'summary.json'}; "
          f"checkpoint: {out / 'checkpoint-final'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
