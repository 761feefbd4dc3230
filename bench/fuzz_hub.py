"""The long fuzz run of the learner hub (issue 10, point 5; the short one is
tests/integration/test_fuzz_hub.py, whose frame generators, tests/fuzzing.py,
this shares).

    .venv/bin/python bench/fuzz_hub.py [--frames 100000] [--rounds 4] [--quiet-s 20] [--prune-s 60]
                                       [--no-curve] [--quick]

A real Hub thread and ReplayBuffer run in this process (bench/simactors.py),
with CURVE on by default (so identity binding and ``key_of`` are exercised),
and a consumer thread taking batches. A child process runs well-behaved
simulated actors streaming valid groups at a fixed pace (as generation would
pace them) through the whole run. Phases:

1. quiet: ``--quiet-s`` seconds of valid traffic alone (the throughput baseline);
2. fuzz: a second child process sends ``--frames`` bad frames in ``--rounds``
   rounds, one category after another, each as fast as the sockets take
   them: random bytes, truncated msgpack, wrong schema versions, lying array
   lengths, huge declared sizes, wrong types, decodable messages the hub must refuse,
   groups with out-of-range values (and group-level lies) from a peer holding
   a real lease, impersonation (another authorised key claiming the good
   actors' ids), and a flood from thousands of identities. After each
   category this process waits until ``flowrl_hub_rejected_messages_total``
   has grown by exactly the frames sent (a good actor's message refused, or a
   bad frame not counted, shows as a mismatch);
3. after: ``--prune-s`` seconds more of valid traffic while the per-peer maps
   age out (the peer horizon and the once-a-minute log marks are set to
   ``--prune-s``; 60 s is the production LOG_EVERY_S).

Reports: hub alive and ``check()`` clean; per category the frames sent and the
reasons counted; valid groups/s and ack latency quiet vs fuzz (while bad
frames are in flight) vs after, and per category (goal: fuzz within 10 % of
quiet); this process's RSS before, after each round, after pruning and after
``malloc_trim`` (flat from round to round: bounded), and the sizes of
``last_seen``, ``key_of`` and ``_logged`` at their peak and after pruning.
Writes bench/results/fuzz_hub.json.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zmq  # noqa: E402
import zmq.auth  # noqa: E402

from bench.simactors import (RESULTS, ActorJob, Consumer, HubSpec, Shape, counter, rss_bytes,  # noqa: E402
                             run_actors, save, start_hub)
from common import keys, transport  # noqa: E402
from common.keys import ClientKeys  # noqa: E402
from common.protocol import Ack, Heartbeat, Hello, Welcome, Work, WorkRequest  # noqa: E402
from learner import hub as hub_module  # noqa: E402
from tests import fuzzing  # noqa: E402

SHAPE = Shape(n=4, tokens=256)  # 8 KiB groups
GOOD = [f"good-{i}" for i in range(8)]
# share of --frames per category; the remainder goes to random bytes
SHARES = {"truncated": .15, "wrong_version": .10, "lying_lengths": .10, "huge_sizes": .01, "wrong_types": .13,
          "refused_after_decode": .05, "liar": .10, "impersonation": .02, "flood": .10}
RAW_SOCKETS = 8
FLOOD_WAVE = 200  # identities connected at once in the flood


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/fuzz_hub.py", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000, help="bad frames in all")
    p.add_argument("--rounds", type=int, default=4, help="the frames are sent in this many rounds of every "
                   "category (RSS after each round shows whether memory keeps growing)")
    p.add_argument("--quiet-s", type=float, default=20.0, help="valid traffic alone before the fuzz")
    p.add_argument("--prune-s", type=float, default=60.0, help="peer horizon and log interval; run this long after")
    p.add_argument("--rate", type=float, default=20.0, help="groups/s each of the 8 good actors sends")
    p.add_argument("--no-curve", action="store_true")
    p.add_argument("--quick", action="store_true", help="5000 frames, 5 s quiet, 5 s pruning")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--out", default=str(RESULTS / "fuzz_hub.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.frames, a.quiet_s, a.prune_s = 5000, 5.0, 5.0
    return a


def plan(frames: int) -> dict[str, int]:
    out = {"random_bytes": 0} | {k: int(frames * v) for k, v in SHARES.items()}
    out["flood"] -= out["flood"] % 3  # three frames an identity
    out["random_bytes"] = frames - sum(out.values())
    return out


# ----------------------------------------------------------------- the fuzzer process
def _cycle(items: list, k: int) -> list:
    return [items[i % len(items)] for i in range(k)]


def _frames(cat: str, k: int, rng: np.random.Generator) -> list[list]:
    """``k`` messages of a decode-level category (each one bad frame set)."""
    good = fuzzing.sample_group(n=SHAPE.n)
    if cat == "random_bytes":
        return fuzzing.random_bytes(rng, k)
    if cat == "truncated":
        return fuzzing.truncated(rng, k, good)
    make = {"wrong_version": fuzzing.wrong_versions, "lying_lengths": fuzzing.lying_lengths,
            "huge_sizes": fuzzing.huge_sizes, "wrong_types": fuzzing.wrong_types,
            "refused_after_decode": lambda g: fuzzing.wrong_but_decodable()}[cat]
    return _cycle(make(good), k)


def _send_raw(socks: list, msgs: list[list]) -> None:
    for i, m in enumerate(msgs):
        socks[i % len(socks)].send_multipart(m)


def _liar(ctx, endpoint: str, curve, k: int, limits: dict) -> dict:
    """A peer with a real lease sends ``k`` lying groups, pipelined; checks every ack's reason."""
    sock = transport.dealer(ctx, endpoint, "liar", curve=curve)
    transport.send(sock, Hello("liar", "sim", "none", 0))
    assert isinstance(transport.recv(sock, 30), Welcome)
    transport.send(sock, WorkRequest("liar", 4, 0))
    work = transport.recv(sock, 30)
    assert isinstance(work, Work) and len(work.prompts) >= 2, work
    cases = _cycle(fuzzing.liar_groups(work, "liar", SHAPE.n, **limits), k)
    wrong, got, sent, unanswered = Counter(), Counter(), 0, 0
    window = 64
    while got.total() + unanswered < k:
        while sent < k and sent - got.total() < window:
            transport.send(sock, cases[sent][0])
            sent += 1
        reply = transport.recv(sock, 30)
        if reply is None:  # would show as a count mismatch too
            unanswered = sent - got.total()
            break
        assert isinstance(reply, Ack) and not reply.accepted, reply
        got[reply.reason] += 1
    expected = Counter(reason for _, reason in cases)
    for reason in expected | got:
        if expected[reason] != got[reason]:
            wrong[reason] = got[reason] - expected[reason]
    sock.close(linger=0)
    return {"acks": dict(got), "ack_reason_mismatch": dict(wrong), "unanswered": unanswered}


def _impersonate(ctx, endpoint: str, intruder, k: int) -> dict:
    """Another authorised key claims the good actors' ids: each message refused as identity."""
    sock = transport.dealer(ctx, endpoint, "intruder", curve=intruder)
    for i in range(k):
        transport.send(sock, Heartbeat(GOOD[i % len(GOOD)], 0, 0))
    sock.close(linger=1000)
    return {}


def _flood(ctx, endpoint: str, curve, k: int, rng: np.random.Generator, wave0: int) -> dict:
    """``k // 3`` fresh identities in waves: garbage, a heartbeat from a stranger (refused as
    unknown_actor, answered), a group with a wrong schema version."""
    answered = idents = 0
    bad_version = fuzzing.with_changes(fuzzing.sample_group(n=SHAPE.n), v=0)
    for start in range(0, k // 3, FLOOD_WAVE):
        names = [f"flood-{wave0}-{i}" for i in range(start, min(start + FLOOD_WAVE, k // 3))]
        socks = [transport.dealer(ctx, endpoint, n, curve=curve) for n in names]
        for name, s in zip(names, socks):
            s.send_multipart([rng.bytes(16)])
            transport.send(s, Heartbeat(name, 0, 0))
            s.send_multipart(bad_version)
        deadline = time.monotonic() + 30
        for s in socks:
            answered += transport.recv(s, max(0.0, deadline - time.monotonic())) is not None
            s.close(linger=2000)  # the last frame may still be queued behind the answered one
        idents += len(names)
    return {"identities": idents, "answered": answered}


def fuzzer(endpoint: str, curve_dir: str, intruder_dir: str, frames: dict, rounds: int, limits: dict, seed: int,
           report, go) -> None:
    """Child process: ``rounds`` times each category in turn; after each, report and wait for the go-ahead."""
    ctx = zmq.Context()
    curve = keys.load_client(curve_dir) if curve_dir else None
    rng = np.random.default_rng(seed)
    raws = [transport.dealer(ctx, endpoint, f"raw-{i}", curve=curve) for i in range(RAW_SOCKETS)]
    time.sleep(0.5)  # connected (and through the CURVE handshake) before the first frame
    for r in range(rounds):
        for cat, k in frames.items():
            if cat == "impersonation" and not intruder_dir:
                continue
            t0 = time.monotonic()
            extra: dict = {}
            if cat == "liar":
                extra = _liar(ctx, endpoint, curve, k, limits)
            elif cat == "impersonation":
                public, secret = zmq.auth.load_certificate(Path(intruder_dir) / "intruder.key_secret")
                extra = _impersonate(ctx, endpoint, ClientKeys(public, secret, curve.server_public), k)
            elif cat == "flood":
                extra = _flood(ctx, endpoint, curve, k, rng, r)
            else:
                _send_raw(raws, _frames(cat, k, rng))
            report.put((r, cat, k, extra, t0, time.monotonic()))
            go.get()
    report.put(None)
    ctx.destroy(linger=0)


# ----------------------------------------------------------------- this process
def _maps(hub) -> dict[str, int]:
    return {"last_seen": len(hub.last_seen), "key_of": len(hub.key_of), "_logged": len(hub._logged)}


def _rejected_total(hub) -> float:
    return sum(counter(hub.metrics.rejected).values())


def _window(acked_at: list[float], latency: list[float], spans: list[tuple[float, float]]) -> dict:
    """Good groups acked within ``spans`` (disjoint): groups/s and ack latency."""
    lat = [x for t, x in zip(acked_at, latency) if any(t0 <= t < t1 for t0, t1 in spans)]
    seconds = sum(t1 - t0 for t0, t1 in spans)
    return {"seconds": seconds, "groups_per_s": len(lat) / seconds,
            "ack_latency_ms_p50": float(np.percentile(lat, 50) * 1e3) if lat else None,
            "ack_latency_ms_p99": float(np.percentile(lat, 99) * 1e3) if lat else None}


def _trimmed_rss() -> float | None:
    """RSS (MB) once glibc has handed its free memory back: what is left is live, the rest of
    the RSS only the allocator's high-water mark (large frames raise glibc's mmap threshold)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        return None
    return rss_bytes() / 2**20


def _keys(tmp: Path, curve: bool) -> tuple[str, str]:
    """(key folder, intruder folder): the run's keys, and a second authorised client key."""
    if not curve:
        return "", ""
    keys.write(tmp / "keys")
    (tmp / "intruder").mkdir()
    zmq.auth.create_certificates(tmp / "intruder", "intruder")
    shutil.copyfile(tmp / "intruder" / "intruder.key", tmp / "keys" / "authorized" / "intruder.key")
    return str(tmp / "keys"), str(tmp / "intruder")


def main(argv=None) -> None:
    a = parse_args(argv)
    t_start = time.monotonic()
    hub_module.LOG_EVERY_S = a.prune_s  # the module constant the hub reads at each log mark
    tmp = Path(tempfile.mkdtemp(prefix="fuzz_hub_"))
    curve_dir, intruder_dir = _keys(tmp, not a.no_curve)
    import logging
    logging.basicConfig(filename=str(tmp / "hub.log"), level=logging.WARNING)  # a warning a (peer, reason) a minute
    spec = HubSpec(SHAPE, prompts=512, capacity=256, groups_per_step=8, peer_horizon_s=a.prune_s, curve_dir=curve_dir)
    hub = start_hub(spec)
    consumer = Consumer(hub.buffer, k=8)
    consumer.start()
    spawn = mp.get_context("spawn")
    out, stop = spawn.Queue(), spawn.Event()
    job = ActorJob(hub.endpoint, GOOD, SHAPE, window=4, rate=a.rate, curve_dir=curve_dir)
    actors = spawn.Process(target=run_actors, args=(job, out, stop))
    actors.start()
    time.sleep(3.0)  # joined and streaming
    t_quiet = time.monotonic()
    rss_before, maps_before = rss_bytes(), _maps(hub)
    time.sleep(a.quiet_s)

    frames = plan(a.frames // a.rounds)
    report, go = spawn.Queue(), spawn.Queue()
    limits = {"vocab": SHAPE.vocab, "max_abs_score": spec.max_abs_score, "max_tokens": SHAPE.tokens}
    fz = spawn.Process(target=fuzzer, args=(hub.endpoint, curve_dir, intruder_dir, frames, a.rounds, limits, a.seed,
                                            report, go))
    t_fuzz = time.monotonic()
    fz.start()
    categories, expected, peak, rss_rounds = {}, _rejected_total(hub), _maps(hub), []
    before = counter(hub.metrics.rejected)
    while (item := report.get(timeout=1800)) is not None:
        r, cat, k, extra, t0, t1 = item
        expected += k
        deadline = time.monotonic() + 120
        while _rejected_total(hub) < expected and time.monotonic() < deadline and hub.is_alive():
            time.sleep(0.02)
        t_counted = time.monotonic()
        time.sleep(0.3)  # a frame counted twice, or a good message refused, would show here
        now = counter(hub.metrics.rejected)
        reasons = {r: now[r] - before.get(r, 0) for r in now if now[r] != before.get(r, 0)}
        before = now
        counted = sum(reasons.values())
        categories[f"{r}:{cat}"] = {"sent": k, "counted": counted, "exact": counted == k, "reasons": reasons,
                                    "send_s": t1 - t0, "span": (t0, t_counted), **extra}
        peak = {m: max(peak[m], v) for m, v in _maps(hub).items()}
        print(f"  {r}:{cat:22} sent {k:6d} counted {counted:8.0f} {'ok' if counted == k else 'MISMATCH'}  {reasons}"
              f"{'  ' + json.dumps(extra) if extra else ''}", flush=True)
        if cat == list(frames)[-1]:
            rss_rounds.append(rss_bytes() / 2**20)
        go.put(True)
    fz.join(timeout=60)
    t_after = time.monotonic()
    rss_fuzz = rss_bytes()
    # the per-peer maps age out: wait for the horizon and the log interval to pass
    time.sleep(a.prune_s + 2 * hub_module.HOUSEKEEPING_S + 1)
    t_end = time.monotonic()
    maps_after, rss_after = _maps(hub), rss_bytes()
    rss_trimmed = _trimmed_rss()
    stop.set()
    res = out.get(timeout=120)
    actors.join(timeout=30)
    consumer.stop.set()
    consumer.join(timeout=5)
    alive, error = hub.is_alive(), hub.error
    check = "ok"
    try:
        hub.check()
    except RuntimeError as e:
        check = repr(e)
    refused = sum(sum(r["refused"].values()) + sum(r["errors"].values()) for r in res["actors"])
    received = counter(hub.metrics.received)[""]
    hub.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    spans = []
    for c in categories.values():  # the good actors while each category was sent and counted
        spans.append(c.pop("span"))
        c["good"] = _window(res["acked_at"], res["latency"], [spans[-1]])
    # "fuzz": while bad frames were in flight (sent, not yet all counted), the pauses between
    # categories left out; "fuzz_wall": the whole fuzz phase, pauses included
    win = {name: _window(res["acked_at"], res["latency"], sp) for name, sp in (
        ("quiet", [(t_quiet, t_fuzz)]), ("fuzz", spans), ("fuzz_wall", [(t_fuzz, t_after)]), ("after", [(t_after, t_end)]))}
    by_cat: dict[str, dict] = {}
    for key, c in categories.items():  # the rounds summed, per category
        b = by_cat.setdefault(key.split(":", 1)[1], {"sent": 0, "counted": 0, "reasons": Counter()})
        b["sent"] += c["sent"]
        b["counted"] += c["counted"]
        b["reasons"].update(c["reasons"])
    sent_bad = sum(c["sent"] for c in categories.values())
    counted_bad = sum(c["counted"] for c in categories.values())
    result = {
        "curve": not a.no_curve, "good_actors": len(GOOD), "rate_per_actor": a.rate, "group_bytes": SHAPE.payload_bytes,
        "hub_alive": alive and error is None, "check": check,
        "bad_frames_sent": sent_bad, "bad_frames_counted": counted_bad, "every_category_exact": all(
            c["exact"] for c in categories.values()),
        "by_category": {k: dict(v, reasons=dict(v["reasons"])) for k, v in by_cat.items()}, "per_round": categories,
        "good_groups_accepted": received, "good_messages_refused": refused, "windows": win,
        "fuzz_over_quiet_throughput": win["fuzz"]["groups_per_s"] / win["quiet"]["groups_per_s"],
        "rss_mb": {"before_fuzz": rss_before / 2**20, "after_each_round": rss_rounds, "after_fuzz": rss_fuzz / 2**20,
                   "after_pruning": rss_after / 2**20, "after_pruning_and_malloc_trim": rss_trimmed},
        "peer_maps": {"before_fuzz": maps_before, "peak": peak, "after_pruning": maps_after},
        "prune_s": a.prune_s, "wall_s": time.monotonic() - t_start,
    }
    print(f"hub alive: {result['hub_alive']}, check(): {check}; bad frames sent {sent_bad}, counted {counted_bad}, "
          f"every category exact: {result['every_category_exact']}; good messages refused: {refused}")
    for name, w in win.items():
        print(f"  {name:9} {w['groups_per_s']:7.1f} groups/s  ack p50 {w['ack_latency_ms_p50']:.1f} ms"
              f"  p99 {w['ack_latency_ms_p99']:.1f} ms  ({w['seconds']:.0f} s)")
    print(f"  fuzz/quiet throughput = {result['fuzz_over_quiet_throughput']:.3f} (goal within 10 %)")
    r = result["rss_mb"]
    print(f"RSS MB: before {r['before_fuzz']:.1f}, after each round {[round(x, 1) for x in rss_rounds]}, "
          f"after pruning {r['after_pruning']:.1f}, after malloc_trim {r['after_pruning_and_malloc_trim'] or 0:.1f};"
          f" peer maps {maps_before} -> peak {peak} -> {maps_after}")
    save(result, a.out)


if __name__ == "__main__":
    main()
