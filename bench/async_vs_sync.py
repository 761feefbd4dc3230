"""Asynchrony's gain: the same real learner and actor, run synchronously and asynchronously.

    python bench/async_vs_sync.py [--repeats 3] [--steps 10] [--warmup 2] [--staleness 2]
        [--model embedded|tiny|DIR] [--engine hf|vllm] [--groups 1] [--n 4] [--max-tokens 256]

Run it with nothing else on the machine: about 40 minutes on 2 idle cores
(3 repeats x 2 modes; each run is ~1 minute of start-up and checkpointing plus
10 steps of 20-40 s), more when it waits for others' work to end (below).

What it measures. A learner (``python -m learner``, pinned to core 0 with
``taskset -c 0``) and one actor (``python -m actors --n 1``, pinned with
``taskset -c 1``; the launcher's actor process inherits the pinning): real
processes, ZeroMQ, the gloo weight broadcast, the learner's DeepSpeed step; one
torch thread each (learner ``--set torch_threads=1``, actors
``--torch-threads 1``, ``OMP_NUM_THREADS=1``), so each role owns one core of
this 2-core machine. The same run is made in two modes, alternating
(sync, async, then async, sync, ...), ``--repeats`` times:

- sync: ``max_staleness = 0``. The hub leases work only to an actor holding the
  learner's current version, and only as much as the next step takes (the
  buffer counts the step in progress), so the actor waits for each new version
  and the learner waits for its data: a step costs training + broadcast +
  generation, one after the other.
- async: ``max_staleness = --staleness`` (default 2, the learner's default).
  The actor generates the next step's groups with an older version while the
  learner trains, so a step costs about max(training, weight receive +
  generation). 1 is the least staleness that allows this overlap, but with one
  actor and one group a step the pipeline is then rigid: the actor may not
  start a batch until the learner has taken the one before, so a long
  generation idles the learner and a long step idles the actor (measured here:
  1.47x median, repeats 1.64/1.47/1.65, bench/results/async_vs_sync-staleness1.json).
  2 lets the actor run one batch further ahead and absorbs those swings, at the
  price of samples a version older (FlowRL's clipped importance weight corrects
  them); ``--staleness 1`` measures the tighter bound.

The figure is trained samples per second over the steady-state steps: the
completions of steps ``warmup+1 .. steps`` in the run's ``steps.jsonl``
divided by the time from the end of step ``warmup`` to the end of the last
step (the timestamps of the learner log's per-step lines). The first
``--warmup`` steps are left out: the first generation has nothing to overlap
with, and the first step and broadcast carry one-off costs. Both modes train
the same prompts in the same order with the same sampling seeds, so their
steps are alike in length. Reported: per mode the median over repeats, the
ratio of the medians (async / sync; the goal here is >= 1.6x) and the ratio
within each repeat.

Where the time goes, per mode, over the same window: the learner's share
training (each row's ``seconds``: the optimizer step, the weight snapshot and
the log) and waiting for data (``flowrl_learner_batch_wait_seconds``), the
learner's broadcast time per step (``broadcast_seconds``; it blocks until the
actor takes the weights, so in async it includes waiting for the actor to end
its generation and is not on the learner's path), and the actor's share
generating, scoring + sending, receiving weights, and idle by reason
(``flowrl_actor_idle_seconds_total``); also the staleness trained on. Counters
are scraped at the end of step ``warmup`` and of the last step; the actor's
move a batch at a time, so its shares are exact only over many steps.

Noise. Other sessions' processes share these two cores, and with autogroup
scheduling (``kernel.sched_autogroup_enabled``, on here) their nice value
does not make them yield to these runs. Before each run the bench waits (at
most ``--quiet-wait-s``) until others have used under ``--max-busy`` of the
cores for 15 s; during a run it watches what they use (from /proc) and stops
and restarts a run (``--attempts`` tries) in which they take over
``--abort-busy`` of the cores over any 30 s or over the measured window
(``others_cpu_fraction`` in each run's figures); those runs are listed in the
JSON's ``discarded_runs``.

Why this setup. Asynchrony can hide at most the shorter of generation (G) and
training (T) behind the longer, so per step the ceiling is
(T + B + G) / max(T + b, B + G), B the weight transfer (~1 s for 538 MB over
gloo) and b what the broadcast takes from training's core: ~2 when G ~ T, and
~1 + G/T when generation is quick. So the two must be comparable:

- Model: the embedded SmolLM2-135M-Instruct, the system's real default. A tiny
  random model (``--model tiny``) makes per-message and polling overheads,
  not compute, the cost; that is not what asynchrony is for, and its
  figures swing with every other process on the machine.
- Engine: HF. vLLM's CPU build generates ~15x faster here
  (bench/results/engines.json), so G << T and the ceiling is ~1 + G/T (~1.1);
  it also starts in ~30 s per run and pins its own threads. ``--engine vllm``
  shows it.
- Shape: 1 prompt x 4 samples (4 sequences a step), up to 256 tokens. On one
  core the learner's step costs ~20 ms per padded token (policy forward and
  backward, reference forward): 4 x (49 prompt tokens + the longest
  completion). HF decoding costs ~0.06-0.08 s per generated position for a
  batch of 4 (it reads all the weights once per position whatever the batch),
  i.e. about the learner's 4 x 20 ms per completion position. So at 4
  sequences G ~ T minus the learner's prompt share, at any length; 8
  sequences a step would make T ~ 2G (ceiling ~1.5). A long max_tokens makes
  the completion part dominate the prompt part (at temperature 1 the model
  often runs to the limit): measured, T ~ 17-23 s and G ~ 15 s per step. The
  actor's batch is one step's groups (``--prompts-per-batch = --groups``).

Writes bench/results/async_vs_sync.json (``--out``); each run's logs,
steps.jsonl and metric scrapes are kept under ``--run-dir`` (checkpoints are
deleted).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.metrics import parse_prometheus_text  # noqa: E402
from tests.integration.helpers import free_ports  # noqa: E402

OUT = REPO / "bench" / "results" / "async_vs_sync.json"
LEARNER_CORE, ACTOR_CORE = "0", "1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/async_vs_sync.py", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="sync/async pairs (medians are reported)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the measurement")
    p.add_argument("--staleness", type=int, default=2, help="max_staleness of the async run (>= 1)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--model", default="embedded", help="'embedded', 'tiny' (random, built here) or an HF directory")
    p.add_argument("--tiny-hidden", type=int, default=256)
    p.add_argument("--tiny-layers", type=int, default=4)
    p.add_argument("--groups", type=int, default=1, help="groups_per_step = the actor's prompts_per_batch")
    p.add_argument("--n", type=int, default=4, help="sampling.n: completions per prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--modes", default="sync,async", help="comma-separated subset of sync,async")
    p.add_argument("--timeout-s", type=float, default=1800, help="give up on one run after this")
    p.add_argument("--max-busy", type=float, default=0.15,
                   help="before each run, wait until the cores are less busy than this (others' work skews a run)")
    p.add_argument("--quiet-wait-s", type=float, default=600, help="wait at most this for --max-busy")
    p.add_argument("--abort-busy", type=float, default=0.3,
                   help="a run during which others use more of the cores (over its window, or any 30 s) "
                        "is stopped or discarded and run again")
    p.add_argument("--attempts", type=int, default=6, help="tries per run (see --abort-busy)")
    p.add_argument("--run-dir", default=str(REPO / "runs" / "bench_async_vs_sync"))
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.staleness < 1 or not 0 <= a.warmup < a.steps - 1:
        p.error("--staleness must be >= 1 and 0 <= --warmup < --steps - 1")
    return a


# ---------------------------------------------------------------- processes
def start(core: str, args: list[str], log: Path) -> subprocess.Popen:
    """``python -m args`` pinned to ``core`` (children inherit the affinity), one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(["taskset", "-c", core, sys.executable, "-m", *args], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return parse_prometheus_text(r.read().decode())
    except OSError:
        return {}


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot(mine: set[int]) -> tuple[float, float]:
    """(busy CPU seconds of all cores since boot, from /proc/stat; CPU seconds used by the live
    processes of the sessions ``mine`` and by this process)."""
    busy = 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            t = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
            busy += (sum(t) - t[3] - t[4]) / TICK
    own = time.process_time()
    if mine:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                f = stat.read_text().rpartition(")")[2].split()
                if int(f[3]) in mine:  # after the command: f[3] session, f[11..14] utime, stime,
                    own += sum(int(x) for x in f[11:15]) / TICK  # and of its children that ended
            except (OSError, IndexError, ValueError):
                continue
    return busy, own


def others_cpu(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU seconds the rest of the machine used between two ``cpu_snapshot``s (processes that
    started and ended meanwhile included: they are in /proc/stat's totals)."""
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


def quiet_machine(max_busy: float, max_wait_s: float, quiet_s: float = 15.0) -> float:
    """Wait until other processes have used less than ``max_busy`` of the two cores for ``quiet_s``
    in a row, at most ``max_wait_s``; returns the seconds waited. Niced work counts too: with
    autogroup scheduling (kernel.sched_autogroup_enabled, on here) nice acts only within a
    session, so another session's niced job competes with these runs like any other."""
    t0 = time.monotonic()
    calm = 0.0
    while True:
        before = cpu_snapshot(set())
        time.sleep(5)
        busy = others_cpu(before, cpu_snapshot(set())) / (5 * 2)
        calm = calm + 5 if busy <= max_busy else 0.0
        if calm >= quiet_s:
            return time.monotonic() - t0
        if time.monotonic() - t0 > max_wait_s:
            print(f"others still use {busy:.0%} of the cores after {max_wait_s:.0f} s; running anyway", flush=True)
            return time.monotonic() - t0


class Contended(Exception):
    """Other processes took too much of the cores during a run: its figures would be theirs."""


def step_times(log: Path) -> dict[int, float]:
    """{step: epoch seconds} from the learner log's "step N vV ..." lines (logging's asctime)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        # "2025-01-01 12:00:00,123 learner0 INFO step 3 v3 loss ..."
        if len(parts) > 5 and parts[3] == "INFO" and parts[4] == "step" and parts[5].isdigit():
            t = datetime.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f")
            out[int(parts[5])] = t.timestamp()
    return out


# ---------------------------------------------------------------- one run
def run_once(a: argparse.Namespace, model: str, mode: str, staleness: int, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    router, pub, weights, lport, aport = free_ports(5)
    learner_args = ["learner", "--model", model, "--max-steps", str(a.steps), "--actors", "1", "--min-actors", "1",
                    "--resume", "never", "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                    "--weight-port", str(weights), "--metrics-port", str(lport), "--run-dir", str(run_dir),
                    "--set", "torch_threads=1", "--set", f"max_staleness={staleness}",
                    "--set", f"groups_per_step={a.groups}", "--set", f"sampling.n={a.n}",
                    "--set", f"sampling.max_tokens={a.max_tokens}", "--set", f"micro_batch_seqs={a.groups * a.n}",
                    "--set", "num_prompts=512", "--set", "lr=1e-6", "--set", "linger_s=2"]
    actor_args = ["actors", "--n", "1", "--engine", a.engine, "--model", model,
                  "--learner", f"tcp://127.0.0.1:{router}", "--metrics-port", str(aport),
                  "--prompts-per-batch", str(a.groups), "--torch-threads", "1"]
    if a.engine == "vllm":
        actor_args += ["--kv-cache-gib", "0.5", "--max-model-len", "1024"]
    llog, alog = run_dir / "learner.log", run_dir / "actors.log"
    t_start = time.monotonic()
    learner = start(LEARNER_CORE, learner_args, llog)
    actors = start(ACTOR_CORE, actor_args, alog)
    scrapes: dict[int, dict] = {}
    mine = {learner.pid, actors.pid}  # start_new_session: each is its session's id
    watch = [(time.monotonic(), cpu_snapshot(mine))]  # others' CPU over the last ~30 s, checked every 10 s
    try:
        deadline = time.monotonic() + a.timeout_s
        done: set[int] = set()
        with open(llog, errors="replace") as tail:
            while True:
                for line in tail.readlines():
                    parts = line.split()
                    if len(parts) > 5 and parts[3] == "INFO" and parts[4] == "step" and parts[5].isdigit():
                        done.add(int(parts[5]))
                for k in (a.warmup, a.steps):
                    if k not in scrapes and (k in done or k == 0):
                        scrapes[k] = {"learner": scrape(lport), "actor": scrape(aport), "at": time.time(),
                                      "cpu": cpu_snapshot(mine)}
                if a.steps in scrapes:
                    break
                for name, p, log in (("learner", learner, llog), ("actors", actors, alog)):
                    if p.poll() is not None:
                        raise RuntimeError(f"{mode}: {name} exited {p.returncode} early:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: no step {a.steps} within {a.timeout_s:.0f} s:\n"
                                       f"{llog.read_text()[-3000:]}")
                if time.monotonic() - watch[-1][0] >= 10:
                    watch = [*watch[-3:], (time.monotonic(), cpu_snapshot(mine))]
                    used = others_cpu(watch[0][1], watch[-1][1]) / (2 * (watch[-1][0] - watch[0][0]))
                    if len(watch) == 4 and used > a.abort_busy:
                        raise Contended(f"others used {used:.0%} of the cores over {watch[-1][0] - watch[0][0]:.0f} s")
                time.sleep(0.2)
        codes = (learner.wait(timeout=300), actors.wait(timeout=120))
        if codes != (0, 0):
            raise RuntimeError(f"{mode}: learner/actors exited {codes}")
    finally:
        for p in (learner, actors):
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - t_start
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~2 GB per run for the embedded model
    shutil.rmtree(run_dir / "checkpoint-final", ignore_errors=True)
    others = others_cpu(scrapes[a.warmup]["cpu"], scrapes[a.steps]["cpu"])
    (run_dir / "scrapes.json").write_text(json.dumps({str(k): v for k, v in scrapes.items()}))
    return summarise(a, mode, staleness, run_dir, scrapes, wall, others)


def _delta(scrapes: dict, k0: int, k1: int, role: str, key: str) -> float | None:
    v0, v1 = scrapes[k0][role].get(key), scrapes[k1][role].get(key)
    if v1 is None:
        return None
    return v1 - (v0 or 0.0)


def summarise(a, mode: str, staleness: int, run_dir: Path, scrapes: dict, wall: float,
              others: float) -> dict:
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "steps.jsonl").read_text().splitlines())
            if "skipped" not in r or not r["skipped"]}
    ends = step_times(run_dir / "learner.log")
    w, s = a.warmup, a.steps
    window = [rows[k] for k in range(w + 1, s + 1)]
    t0 = ends[w] if w else None
    if t0 is None:  # no warm-up: from the first step's start
        t0 = ends[1] - rows[1]["seconds"]
    span = ends[s] - t0
    samples = sum(len(r["prompt_ids"]) for r in window) * a.n
    train = sum(r["seconds"] for r in window)
    d = lambda role, key: _delta(scrapes, w, s, role, key)  # noqa: E731
    wait = d("learner", "flowrl_learner_batch_wait_seconds_sum")
    if wait is None or not w:
        wait = sum(r.get("wait_seconds", 0.0) for r in window) or None
    gen = d("actor", "flowrl_actor_generate_duration_seconds_sum")
    batches = d("actor", "flowrl_actor_generate_duration_seconds_count")
    dropped = d("learner", "flowrl_hub_groups_dropped_stale_total")
    score = d("actor", "flowrl_actor_score_duration_seconds_sum")
    recv = d("actor", 'flowrl_weightsync_duration_seconds_sum{role="actor"}')
    idle = {reason: d("actor", f'flowrl_actor_idle_seconds_total{{reason="{reason}"}}')
            for reason in ("no_work", "weights", "scoring")}
    frac = lambda x: None if x is None else round(x / span, 3)  # noqa: E731
    a0, a1 = scrapes[w], scrapes[s]
    dt = a1["at"] - a0["at"]
    out = {
        "mode": mode, "max_staleness": staleness, "samples_per_s": samples / span,
        "steps_measured": len(window), "window_s": round(span, 2), "seconds_per_step": round(span / len(window), 3),
        "run_wall_s": round(wall, 1),
        "learner": {"train_fraction": frac(train), "wait_for_data_fraction": frac(wait),
                    "other_fraction": None if wait is None else round(1 - (train + wait) / span, 3),
                    "train_s_per_step": round(train / len(window), 3),
                    "broadcast_s_per_step": round(statistics.mean(r["broadcast_seconds"] for r in window), 3)},
        "actor": {"generate_fraction": frac(gen), "score_send_fraction": frac(score),
                  "weight_receive_fraction": frac(recv),
                  "generate_s_per_step": None if gen is None else round(gen / len(window), 3),
                  "weight_receive_s_per_step": None if recv is None else round(recv / len(window), 3),
                  "idle_fraction_by_reason": {k: frac(v) for k, v in idle.items() if v is not None} or None},
        "staleness_mean": round(statistics.mean(r["staleness_mean"] for r in window), 3),
        "groups_dropped_stale": dropped,
        # other processes' work on the two cores over the window, as a share of both cores' time
        "others_cpu_fraction": round(others / (2 * dt), 3),
        "actor_batches": batches,
        "actor_generate_s_per_batch": None if not batches else round(gen / batches, 3),
    }
    if gen is not None and score is not None and recv is not None:
        # the streaming actor scores while it generates; an upper bound on its idle time otherwise
        out["actor"]["not_generating_fraction"] = round(1 - gen / span, 3)
    return out


# ---------------------------------------------------------------- main
def build_model(a, root: Path) -> str:
    if a.model != "tiny":
        return a.model
    from common.models import build_tiny_model

    return build_tiny_model(root / "tiny-model", seed=1, hidden=a.tiny_hidden, layers=a.tiny_layers)


def medians(runs: list[dict]) -> dict:
    """The median of every number in the runs' summaries, keeping their nesting."""
    out = {}
    for key, v in runs[0].items():
        if isinstance(v, dict):
            out[key] = medians([r[key] for r in runs if isinstance(r.get(key), dict)])
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and key != "repeat":
            vals = [r[key] for r in runs if r.get(key) is not None]
            out[key] = round(statistics.median(vals), 6) if vals else None
    return out


BREAKDOWN = [  # (label, section, key): the table printed per mode (medians over runs)
    ("seconds per step", None, "seconds_per_step"),
    ("learner: training", "learner", "train_fraction"),
    ("learner: waiting for data", "learner", "wait_for_data_fraction"),
    ("learner: train s/step", "learner", "train_s_per_step"),
    ("learner: broadcast s/step (blocking, incl. waiting for the actor)", "learner", "broadcast_s_per_step"),
    ("actor: generating", "actor", "generate_fraction"),
    ("actor: scoring + sending", "actor", "score_send_fraction"),
    ("actor: receiving weights", "actor", "weight_receive_fraction"),
    ("actor: generate s/batch", None, "actor_generate_s_per_batch"),
    ("actor: weight receive s/step", "actor", "weight_receive_s_per_step"),
    ("staleness trained on (versions)", None, "staleness_mean"),
    ("other processes' share of the cores", None, "others_cpu_fraction"),
]


def main(argv=None) -> int:
    import signal

    a = parse_args(argv)
    # SIGTERM (and SIGINT, ignored in background jobs otherwise) end the bench through the runs'
    # clean-up, which kills the learner and actors it started
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset and 2 cores", file=sys.stderr)
        return 2
    root = Path(a.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    model = build_model(a, root)
    modes = [m for m in a.modes.split(",") if m]
    stale = {"sync": 0, "async": a.staleness}
    t_bench = time.monotonic()
    runs: list[dict] = []
    discarded: list[dict] = []
    for r in range(a.repeats):
        order = modes if r % 2 == 0 else modes[::-1]  # alternate, so drift hits both modes alike
        for mode in order:
            for attempt in range(1, a.attempts + 1):
                waited = quiet_machine(a.max_busy, a.quiet_wait_s)
                try:
                    res = run_once(a, model, mode, stale[mode], root / f"{mode}-{r}")
                except Contended as e:
                    print(f"repeat {r} {mode:5s} stopped: {e}; running it again", flush=True)
                    discarded.append({"mode": mode, "repeat": r, "stopped": str(e)})
                    continue
                res["repeat"], res["waited_for_quiet_s"] = r, round(waited, 1)
                others = res["others_cpu_fraction"]
                print(f"repeat {r} {mode:5s} {res['samples_per_s']:.4f} samples/s  {res['seconds_per_step']:.2f} s/step"
                      f"  learner waits {res['learner']['wait_for_data_fraction']:.0%}"
                      f"  actor generates {res['actor']['generate_fraction']:.0%}  others' CPU {others:.0%}", flush=True)
                if others <= a.abort_busy or attempt == a.attempts:
                    break
                print(f"  others used {others:.0%} of the cores during the run: discarded, running it again",
                      flush=True)
                discarded.append(res)
            else:
                raise SystemExit(f"{mode} run {r}: the machine stayed busy for {a.attempts} tries")
            runs.append(res)
    per_mode = {m: medians([x for x in runs if x["mode"] == m]) for m in modes}
    result = {
        "setup": {"model": a.model if a.model != "tiny" else f"tiny(hidden={a.tiny_hidden}, layers={a.tiny_layers})",
                  "engine": a.engine, "groups_per_step": a.groups, "n": a.n, "max_tokens": a.max_tokens,
                  "sequences_per_step": a.groups * a.n, "steps": a.steps, "warmup": a.warmup,
                  "repeats": a.repeats, "sync_max_staleness": 0, "async_max_staleness": a.staleness,
                  "pinning": f"learner taskset -c {LEARNER_CORE}, actor taskset -c {ACTOR_CORE}, "
                             "one torch thread each"},
        "samples_per_s": {m: per_mode[m]["samples_per_s"] for m in modes},
        "breakdown_medians": per_mode,
        "bench_wall_s": round(time.monotonic() - t_bench, 1),
        "runs": runs,
        "discarded_runs": discarded,
    }
    if "sync" in modes and "async" in modes:
        result["ratio_async_over_sync"] = round(per_mode["async"]["samples_per_s"] / per_mode["sync"]["samples_per_s"], 3)
        pairs = [next(x for x in runs if x["repeat"] == r and x["mode"] == "async")["samples_per_s"]
                 / next(x for x in runs if x["repeat"] == r and x["mode"] == "sync")["samples_per_s"]
                 for r in range(a.repeats)]
        result["ratio_per_repeat"] = [round(x, 3) for x in pairs]
    print()
    print(f"{'median over runs':66s}" + "".join(f"{m:>10s}" for m in modes))
    print(f"{'samples/s':66s}" + "".join(f"{per_mode[m]['samples_per_s']:10.4f}" for m in modes))
    for label, section, key in BREAKDOWN:
        vals = [(per_mode[m][section] if section else per_mode[m]).get(key) for m in modes]
        print(f"{label:66s}" + "".join("      None" if v is None else f"{v:10.3f}" for v in vals))
    if "ratio_async_over_sync" in result:
        print(f"\nasync / sync: {result['ratio_async_over_sync']:.2f}x (goal >= 1.6x); per repeat: "
              + ", ".join(f"{x:.2f}" for x in result["ratio_per_repeat"]))
    print(f"bench wall time {result['bench_wall_s']:.0f} s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
