"""Transport throughput: trajectory groups through the project's path against
the same frames over raw pyzmq PUSH/PULL (issue 10, point 6).

    .venv/bin/python bench/transport.py [--rounds 5] [--window 16] [--quick]

Project path: a client process speaks the actor protocol on a DEALER
(bench/simactors.py: Hello → Welcome, WorkRequest → Work with a lease,
Trajectories → Ack), keeping up to ``--window`` groups unacked as the real
actor does (acks are asynchronous, leases taken in batches), to the real Hub
thread (ROUTER: decode, validation, lease book) in this process, which puts
each group in the ReplayBuffer; a consumer thread takes batches so the buffer
never fills. Raw path: the same client process sends the very frames one
encoded group is made of (``protocol.encode``: msgpack header + token and
log-prob arrays) with ``send_multipart`` on a PUSH, copy=True and copy=False
(the faster is the baseline), to a PULL thread in this process that only
receives them (``recv_multipart(copy=False)``). Both are timed in the client,
from the first send to the last ack (project) or to the receiver's one "done"
reply (raw).

Two sizes: ~32 KiB groups (4 completions x 1024 tokens) and ~1 MiB groups
(16 x 8192). Each round runs every path, in alternating order, after one
warm-up round; the median round is reported (the machine is shared and noisy).
Prints MB/s (10^6 bytes of frames) and groups/s per path, the CPU time a group
costs each process (all its threads, zmq's I/O threads included: on a loaded
2-core machine the wall-clock ratio follows the CPU ratio), and the ratio
project/raw per size (goal >= 0.8), and the ratio of the CPU a group costs both
processes together, raw over project: times the share of the cores raw keeps
busy, that bounds the wall-clock ratio. Writes bench/results/transport.json.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq  # noqa: E402

from bench.simactors import (RESULTS, Consumer, HubSpec, Shape, SimActor, completions, drive,  # noqa: E402
                             save, start_hub)
from common import protocol, transport  # noqa: E402
from common.protocol import Trajectories  # noqa: E402

SIZES = {"32KiB": Shape(n=4, tokens=1024), "1MiB": Shape(n=16, tokens=8192)}
MODES = ("project", "raw_copy", "raw_nocopy")
"""raw_copy / raw_nocopy: send_multipart(frames, copy=True / False); the faster is the baseline."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/transport.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--window", type=int, default=16, help="unacked groups a client keeps in flight")
    p.add_argument("--groups", type=int, nargs=2, default=(4000, 400), metavar=("SMALL", "LARGE"),
                   help="groups per round for the 32 KiB and the 1 MiB size")
    p.add_argument("--quick", action="store_true", help="2 rounds of 400 and 40 groups (development)")
    p.add_argument("--out", default=str(RESULTS / "transport.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.groups = 2, (400, 40)
    return a


# ----------------------------------------------------------------- client process
def _project_round(ctx: zmq.Context, endpoint: str, actor_id: str, comps, groups: int, window: int) -> float:
    a = SimActor(ctx, endpoint, actor_id, comps, window=window, budget=groups)
    a.handle(transport.recv(a.sock, 10.0), time.monotonic())  # the Welcome, before the clock starts
    assert a.joined, "no welcome"
    t0 = time.perf_counter()
    drive([a], lambda now: a.sent >= groups and a.idle, drain_s=30.0)
    dt = time.perf_counter() - t0
    assert a.accepted == groups and not a.refused and not a.errors, a.report()
    a.close()
    return dt


def _raw_round(push: zmq.Socket, back: zmq.Socket, frames: list, groups: int, copy: bool) -> float:
    t0 = time.perf_counter()
    for _ in range(groups):
        push.send_multipart(frames, copy=copy)
    assert back.poll(60_000), "raw receiver never answered"
    back.recv()
    return time.perf_counter() - t0


def _server_cpu(conn) -> float:
    """The CPU seconds the server process (hub, consumer, raw receiver, their zmq I/O) has used."""
    conn.send(None)
    return conn.recv()


def client(endpoints: dict, shape: Shape, groups: int, rounds: int, window: int, conn, out) -> None:
    """Child process: a warm-up round, then ``rounds`` rounds of both paths, alternating order."""
    ctx = zmq.Context()
    comps = completions(shape)
    frames = protocol.encode(Trajectories(1, "raw", 0, comps[0].tokens[:shape.prompt_len].copy(), comps, {}))
    nbytes = sum(memoryview(f).nbytes for f in frames)
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints["pull"])
    back = ctx.socket(zmq.PULL)
    back.connect(endpoints["back"])
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for r in range(rounds + 1):
        for mode in MODES if r % 2 else MODES[::-1]:
            c0, s0 = time.process_time(), _server_cpu(conn)
            if mode.startswith("raw"):
                dt = _raw_round(push, back, frames, groups, copy=mode == "raw_copy")
            else:
                dt = _project_round(ctx, endpoints["hub"], f"bench-{r}", comps, groups, window)
            c1, s1 = time.process_time(), _server_cpu(conn)
            if r:  # round 0 warms up sockets, allocators and caches
                times[mode].append(dt)
                cpu[mode].append(((c1 - c0) / groups, (s1 - s0) / groups))
    conn.close()
    out.put({"times": times, "cpu": cpu, "bytes_per_group": nbytes, "frames_per_group": len(frames)})
    ctx.destroy(linger=0)


# ----------------------------------------------------------------- this process
def _raw_receiver(pull: zmq.Socket, back: zmq.Socket, groups: int, rounds: int) -> None:
    for _ in range(rounds):
        for _ in range(groups):
            pull.recv_multipart(copy=False)  # as the hub receives: frames, not copies
        back.send(b"done")


def _cpu_server(conn) -> None:
    try:
        while conn.recv() is None:
            conn.send(time.process_time())
    except EOFError:
        pass


def run_size(name: str, shape: Shape, groups: int, rounds: int, window: int) -> dict:
    hub = start_hub(HubSpec(shape, prompts=256, capacity=4 * window, groups_per_step=4))
    consumer = Consumer(hub.buffer, k=4)
    consumer.start()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0")
    back = ctx.socket(zmq.PUSH)
    back.bind("tcp://127.0.0.1:0")
    endpoints = {"hub": hub.endpoint, "pull": pull.getsockopt(zmq.LAST_ENDPOINT).decode(),
                 "back": back.getsockopt(zmq.LAST_ENDPOINT).decode()}
    receiver = threading.Thread(target=_raw_receiver, args=(pull, back, groups, 2 * (rounds + 1)), daemon=True)
    receiver.start()
    spawn = mp.get_context("spawn")
    q = spawn.Queue()
    mine, theirs = spawn.Pipe()
    proc = spawn.Process(target=client, args=(endpoints, shape, groups, rounds, window, theirs, q))
    proc.start()
    threading.Thread(target=_cpu_server, args=(mine,), daemon=True).start()
    res = q.get(timeout=1800)
    proc.join(timeout=30)
    consumer.stop.set()
    consumer.join(timeout=5)
    hub.check()
    received = sum(s.value for m in hub.metrics.received.collect() for s in m.samples if s.name.endswith("_total"))
    hub.stop()
    ctx.destroy(linger=0)
    if proc.exitcode != 0:
        raise SystemExit(f"client exited {proc.exitcode}")
    assert received == groups * (rounds + 1), (received, groups, rounds)
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    # CPU microseconds a group, client and server process (every thread, zmq's I/O threads too)
    cpu = {k: [statistics.median(x[i] for x in v) * 1e6 for i in (0, 1)] for k, v in res["cpu"].items()}
    per = {k: {"median_s": med[k], "groups_per_s": groups / med[k],
               "MB_per_s": groups * res["bytes_per_group"] / med[k] / 1e6, "rounds_s": res["times"][k],
               "cpu_us_per_group": {"client": cpu[k][0], "server": cpu[k][1]}} for k in med}
    raw = min(("raw_copy", "raw_nocopy"), key=med.get)
    return {"shape": {"completions": shape.n, "tokens": shape.tokens, "prompt_len": shape.prompt_len},
            "bytes_per_group": res["bytes_per_group"], "frames_per_group": res["frames_per_group"],
            "groups_per_round": groups, **per, "raw_baseline": raw,
            "ratio_project_over_raw": med[raw] / med["project"],
            # both processes share the cores, so a path's groups/s is at most cores / (its CPU a
            # group): with raw using a share u of them, project/raw <= this ratio / u
            "cpu_ratio_raw_over_project": sum(cpu[raw]) / sum(cpu["project"])}


def main(argv=None) -> None:
    a = parse_args(argv)
    t0 = time.monotonic()
    result = {"rounds": a.rounds, "window": a.window, "machine": f"{platform.machine()}, {mp.cpu_count()} cores",
              "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "sizes": {}}
    for (name, shape), groups in zip(SIZES.items(), a.groups):
        r = run_size(name, shape, groups, a.rounds, a.window)
        result["sizes"][name] = r
        print(f"{name:>6} ({r['bytes_per_group']} B, {r['frames_per_group']} frames), median of {a.rounds} x {groups}:")
        for mode in MODES[::-1]:
            c = r[mode]["cpu_us_per_group"]
            print(f"  {mode:10} {r[mode]['MB_per_s']:8.1f} MB/s {r[mode]['groups_per_s']:9.1f} groups/s"
                  f"   CPU us/group: client {c['client']:6.0f} server {c['server']:6.0f}")
        print(f"  project/{r['raw_baseline']} = {r['ratio_project_over_raw']:.2f}x (goal >= 0.8); CPU a group, "
              f"{r['raw_baseline']}/project = {r['cpu_ratio_raw_over_project']:.2f}x")
    result["wall_s"] = time.monotonic() - t0
    save(result, a.out)


if __name__ == "__main__":
    main()
