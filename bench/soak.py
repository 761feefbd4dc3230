"""Soak: 64 simulated actors against a learner hub in its own process, for
``--minutes`` (issue 10, point 6).

    .venv/bin/python bench/soak.py [--minutes 10] [--actors 64] [--procs 4] [--rate 2] [--quick]

The hub process is small: the real Hub thread (ROUTER) and ReplayBuffer, and a
consumer thread that stands in for the trainer (takes ``groups_per_step``
groups, then "trains" for ``--step-s``); nothing else runs in it, so its RSS is
the hub's. The actors (bench/simactors.py: no model, they replay synthetic
valid groups, 8 completions x 512 tokens, ~32 KiB) live in ``--procs``
processes with many DEALER sockets each; each actor sends ``--rate`` groups/s
with up to 4 unacked, and now and then crashes between generations
(``--restart-mean-s``) and comes back under a new id, abandoning its leases:
they expire and are re-queued, the silent id is evicted and its per-peer state
pruned, as in a long run with flaky actors.

Sampled every ``--sample-s``: the hub process's RSS, buffer and lease sizes,
seats and per-peer maps. Reported: RSS at the start (after ``--warmup-s``) and
at the end and the largest drift from the start (goal: flat within 10 %).
Accounting: every group an actor saw acked as accepted, by (actor id, prompt
id), must be either taken by the consumer or still buffered at the end, and
nothing else may be (a lost or duplicated group shows as a difference).
Writes bench/results/soak.json.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.simactors import (RESULTS, ActorJob, Consumer, HubSpec, Shape, counter, run_actors,  # noqa: E402
                             save, start_hub)

SHAPE = Shape(n=8, tokens=512)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--actors", type=int, default=64)
    p.add_argument("--procs", type=int, default=4, help="processes the actors are spread over")
    p.add_argument("--rate", type=float, default=2.0, help="groups/s each actor sends")
    p.add_argument("--restart-mean-s", type=float, default=120.0, help="mean time between an actor's crashes")
    p.add_argument("--step-s", type=float, default=0.1, help="the consumer's 'training' time a batch")
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="1 minute, 10 s warm-up (development)")
    p.add_argument("--out", default=str(RESULTS / "soak.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.minutes, a.warmup_s, a.sample_s, a.restart_mean_s = 1.0, 10.0, 2.0, 20.0
    return a


# ----------------------------------------------------------------- the hub process
def serve(spec: HubSpec, groups_per_step: int, step_s: float, conn) -> None:
    """Hub + buffer + consumer; answers "stats" on ``conn`` until "stop", then sends the accounting."""
    import logging
    logging.getLogger("learner.hub").setLevel(logging.ERROR)  # a line an eviction; they are counted instead
    hub = start_hub(spec)
    consumer = Consumer(hub.buffer, k=groups_per_step, step_s=step_s, keep_ids=True)
    consumer.start()
    conn.send(hub.endpoint)
    while (cmd := conn.recv()) == "stats":
        buffered, in_flight = hub.buffer.sizes()
        conn.send({"buffered": buffered, "in_flight": in_flight, "members": len(hub.members()),
                   "last_seen": len(hub.last_seen), "key_of": len(hub.key_of), "_logged": len(hub._logged),
                   "received": counter(hub.metrics.received)[""], "taken": consumer.taken,
                   "alive": hub.is_alive(), "ids": consumer.drain_ids()})
    assert cmd == "stop", cmd
    consumer.stop.set()
    consumer.join(timeout=5)
    check = "ok"
    try:
        hub.check()
    except RuntimeError as e:
        check = repr(e)
    alive = hub.is_alive()
    hub.stop()
    stats = hub.buffer.stats
    conn.send({"ids": consumer.drain_ids(), "buffered": Counter((g.actor_id, g.prompt_id) for g in hub.buffer.groups),
               "received": counter(hub.metrics.received)[""], "rejected": counter(hub.metrics.rejected),
               "joins": counter(hub.metrics.joins)[""], "evictions": counter(hub.metrics.evictions),
               "leases_expired": stats.expired, "prompts_released": stats.released,
               "dropped_stale": stats.dropped_stale, "alive": alive, "check": check})


# ----------------------------------------------------------------- this process
def main(argv=None) -> None:
    a = parse_args(argv)
    import psutil
    t_start = time.monotonic()
    spawn = mp.get_context("spawn")
    spec = HubSpec(SHAPE, prompts=4096, capacity=512, groups_per_step=32, lease_timeout_s=30.0,
                   actor_timeout_s=30.0)
    conn, theirs = spawn.Pipe()
    hub_proc = spawn.Process(target=serve, args=(spec, spec.groups_per_step, a.step_s, theirs))
    hub_proc.start()
    endpoint = conn.recv()
    hub_ps = psutil.Process(hub_proc.pid)

    out = spawn.Queue()
    per = -(-a.actors // a.procs)
    ids = [f"sim-{i}" for i in range(a.actors)]
    seconds = a.minutes * 60
    jobs = [ActorJob(endpoint, ids[k:k + per], SHAPE, window=4, rate=a.rate, seconds=seconds, keep_ids=True,
                     restart_mean_s=a.restart_mean_s, leave=True) for k in range(0, a.actors, per)]
    procs = [spawn.Process(target=run_actors, args=(job, out)) for job in jobs]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    samples: list[dict] = []
    taken: Counter = Counter()  # (actor id, prompt id) of the groups the consumer took, kept here

    def sample() -> dict:
        conn.send("stats")
        s = conn.recv()
        taken.update(s.pop("ids"))
        s.update(t=time.monotonic() - t0, rss_mb=hub_ps.memory_info().rss / 2**20, cpu_s=sum(hub_ps.cpu_times()[:2]))
        samples.append(s)
        return s

    next_print = 0.0
    while time.monotonic() - t0 < seconds:
        s = sample()
        if s["t"] >= next_print:
            next_print += 60
            print(f"  t={s['t']:5.0f}s RSS {s['rss_mb']:6.1f} MB  received {s['received']:7.0f}  taken {s['taken']:7d}"
                  f"  buffered {s['buffered']:3d}  in flight {s['in_flight']:3d}  seats {s['members']:3d}"
                  f"  last_seen {s['last_seen']:3d}", flush=True)
        time.sleep(a.sample_s)
    reports = [out.get(timeout=120) for _ in procs]  # the actors stop on their own, drain their acks, leave
    for p in procs:
        p.join(timeout=30)
    time.sleep(1.0)  # the last releases handled
    final = sample()
    conn.send("stop")
    acct = conn.recv()
    hub_proc.join(timeout=30)

    acked: Counter = Counter()
    for r in reports:
        acked.update(r["ids"])
    taken.update(acct["ids"])
    accounted = taken + acct["buffered"]
    lost, extra = acked - accounted, accounted - acked
    actors = [x for r in reports for x in r["actors"]]
    steady = [s for s in samples if s["t"] >= a.warmup_s]
    rss0, rss1 = steady[0]["rss_mb"], steady[-1]["rss_mb"]
    drift = max(abs(s["rss_mb"] - rss0) for s in steady) / rss0
    result = {
        "minutes": a.minutes, "actors": a.actors, "procs": a.procs, "rate_per_actor": a.rate,
        "group_bytes": SHAPE.payload_bytes, "restart_mean_s": a.restart_mean_s, "warmup_s": a.warmup_s,
        "rss_mb": {"start": rss0, "end": rss1, "max": max(s["rss_mb"] for s in steady),
                   "max_drift_from_start": drift, "at_first_sample": samples[0]["rss_mb"]},
        "groups": {"acked_accepted": acked.total(), "taken": taken.total(),
                   "buffered_at_end": acct["buffered"].total(), "hub_received": acct["received"],
                   "lost": lost.total(), "unexpected": extra.total(),
                   "lost_examples": [list(k) for k in list(lost)[:5]]},
        "actors_sent": sum(x["sent"] for x in actors), "actor_restarts": sum(x["restarts"] for x in actors),
        "refused": dict(sum((Counter(x["refused"]) for x in actors), Counter())),
        "errors": dict(sum((Counter(x["errors"]) for x in actors), Counter())),
        "hub": {k: acct[k] for k in ("rejected", "joins", "evictions", "leases_expired", "prompts_released",
                                     "dropped_stale", "alive", "check")},
        "hub_cpu_s": final["cpu_s"], "final": {k: final[k] for k in ("members", "last_seen", "key_of", "_logged")},
        "samples": [{k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()} for s in samples],
        "wall_s": time.monotonic() - t_start,
    }
    g = result["groups"]
    print(f"hub RSS after {a.warmup_s:.0f} s warm-up {rss0:.1f} MB, at the end {rss1:.1f} MB, max drift "
          f"{100 * drift:.1f} % (goal: within 10 %)")
    print(f"groups acked as accepted {g['acked_accepted']}: taken {g['taken']} + buffered {g['buffered_at_end']}; "
          f"lost {g['lost']}, unexpected {g['unexpected']}; hub counted {g['hub_received']:.0f}")
    print(f"{result['actor_restarts']} actor restarts, {acct['leases_expired']} leased prompts expired and re-queued, "
          f"evictions {acct['evictions']}; hub alive {acct['alive']}, check() {acct['check']}")
    save(result, a.out)


if __name__ == "__main__":
    main()
