"""The demo: FlowRL on the embedded SmolLM2-135M-Instruct and the built-in
arithmetic task, on CPU, with the learner and two local actors as separate
processes (the same commands a cluster runs). Shows a live table, serves the
learner's /metrics, and ends by writing a PNG of score and diversity per step.

    python -m learner.demo [--steps 20] [--out runs/demo]

It launches ``python -m learner`` and ``python -m actors`` as subprocesses and
only reads what they publish (steps.jsonl, /metrics); it imports neither role.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m learner.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--model", default="embedded", help="model directory or 'embedded'")
    p.add_argument("--out", default="runs/demo", help="run directory (steps.jsonl, logs, plot, checkpoint)")
    p.add_argument("--metrics-port", type=int, default=9100, help="learner /metrics port (actors use 9200+)")
    p.add_argument("--port", type=int, default=5555, help="learner ROUTER port (PUB is port+1)")
    p.add_argument("--max-tokens", type=int, default=48, help="completion length limit")
    a = p.parse_args(argv)
    if a.steps < 1 or a.max_tokens < 1:
        p.error("--steps and --max-tokens must be >= 1")
    return a


def launch(a: argparse.Namespace, out: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    learner = subprocess.Popen(
        [sys.executable, "-m", "learner", "--gpus", "0", "--model", a.model, "--max-steps", str(a.steps),
         "--actors", "2", "--bind", f"tcp://127.0.0.1:{a.port}", "--pub-bind", f"tcp://127.0.0.1:{a.port + 1}",
         "--metrics-port", str(a.metrics_port), "--run-dir", str(out),
         "--set", "groups_per_step=2", "--set", "sampling.n=4", "--set", f"sampling.max_tokens={a.max_tokens}",
         "--set", "micro_batch_seqs=4", "--set", "lr=1e-5", "--set", "algo.log_z_lr=1e-3",
         "--set", "max_staleness=1", "--set", "linger_s=2"],
        env=env, stdout=open(out / "learner.log", "w"), stderr=subprocess.STDOUT)
    actors = subprocess.Popen(
        [sys.executable, "-m", "actors", "--n", "2", "--model", a.model, "--learner", f"tcp://127.0.0.1:{a.port}",
         "--metrics-port", "9200", "--prompts-per-batch", "1"],
        env=env, stdout=open(out / "actors.log", "w"), stderr=subprocess.STDOUT)
    return learner, actors


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict], steps: int, elapsed: float, metrics_port: int):
    from rich.table import Table

    t = Table(title=f"FlowRL demo: step {len(rows)}/{steps}, {elapsed:.0f}s "
                    f"(metrics: http://127.0.0.1:{metrics_port}/metrics)")
    for col in ("step", "version", "mean score", "loss", "log Z", "staleness", "distinct", "samples/s"):
        t.add_column(col, justify="right")
    for r in rows[-15:]:
        t.add_row(str(r["step"]), str(r["version"]), f"{r['score_mean']:.3f}", f"{r['loss']:.3f}",
                  f"{r.get('log_z_mean', 0):.2f}", f"{r['staleness_mean']:.2f}", f"{r['distinct_ratio']:.2f}",
                  f"{r['samples_per_s']:.2f}")
    return t


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [r["score_mean"] for r in rows], marker="o")
    ax1.set(title="mean score", xlabel="step", ylim=(-0.05, 1.05))
    ax2.plot(steps, [r["distinct_ratio"] for r in rows], marker="o", label="distinct completions / n")
    ax2.plot(steps, [r["distinct_2"] for r in rows], marker="s", label="distinct-2")
    ax2.set(title="diversity", xlabel="step", ylim=(-0.05, 1.05))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    from rich.live import Live

    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.jsonl").unlink(missing_ok=True)
    t0 = time.monotonic()
    learner, actors = launch(a, out)
    try:
        with Live(table([], a.steps, 0, a.metrics_port), refresh_per_second=2) as live:
            while learner.poll() is None:
                for name, p in (("actors", actors),):
                    if p.poll() not in (None, 0):
                        raise SystemExit(f"demo: {name} failed (exit {p.returncode}); see {out / (name + '.log')}")
                live.update(table(read_rows(out / "steps.jsonl"), a.steps, time.monotonic() - t0, a.metrics_port))
                time.sleep(1)
        if learner.returncode != 0:
            raise SystemExit(f"demo: learner failed (exit {learner.returncode}); see {out / 'learner.log'}")
        actors.wait(timeout=60)
    finally:
        for p in (learner, actors):
            if p.poll() is None:
                p.terminate()
    rows = read_rows(out / "steps.jsonl")
    plot(rows, out / "demo.png")
    wall = time.monotonic() - t0
    first, last = rows[0], rows[-1]
    print(f"demo finished in {wall:.0f}s: {len(rows)} steps; mean score {first['score_mean']:.3f} (step 1) -> "
          f"{last['score_mean']:.3f} (step {last['step']}); plot: {out / 'demo.png'}; "
          f"checkpoint: {out / 'checkpoint-final'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
