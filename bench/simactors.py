"""Simulated actors and a model-free learner hub, shared by bench/transport.py,
bench/fuzz_hub.py and bench/soak.py.

- ``start_hub``: the real ``learner.hub.Hub`` thread (ROUTER) and
  ``learner.buffer.ReplayBuffer``, configured for synthetic prompts, plus a
  ``Consumer`` thread that stands in for the trainer and takes batches so the
  buffer never fills.
- ``SimActor``: one actor speaking the real protocol on a DEALER (Hello →
  Welcome, WorkRequest → Work with a lease, Trajectories → Ack), with no
  model: it replays a fixed set of valid completions. Like the real actor it
  keeps a window of unacked groups in flight (acks are asynchronous), leases
  ahead up to that window, and may be paced (groups per second, as if
  generation took time) or not (as fast as the hub acks).
- ``drive``: runs many SimActors in one thread over one zmq.Poller, so a
  process can host dozens of actors.

Not a bench by itself; run the three benches instead.
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from common import protocol, transport  # noqa: E402
from common.keys import ClientKeys  # noqa: E402
from common.metrics import HubMetrics  # noqa: E402
from common.protocol import (Ack, Completion, Error, Hello, Release, Sampling, Trajectories, Welcome,  # noqa: E402
                             Work, WorkRequest)
from learner.buffer import ReplayBuffer  # noqa: E402
from learner.hub import Hub, RunState  # noqa: E402

RESULTS = ROOT / "bench" / "results"


# ----------------------------------------------------------------- payload
@dataclass(frozen=True)
class Shape:
    """What one trajectory group carries: ``n`` completions of ``tokens`` tokens each (int32
    ids + float32 log-probs: 8 bytes a token), for a prompt of ``prompt_len`` tokens."""

    n: int
    tokens: int
    prompt_len: int = 32
    vocab: int = 32000

    @property
    def payload_bytes(self) -> int:
        return 8 * self.n * self.tokens + 4 * self.prompt_len


def completions(shape: Shape, seed: int = 0) -> list[Completion]:
    """Valid completions for the hub's checks: ids within the vocabulary, log-probs finite
    and <= 0, a bounded score, version 0 (the hub's policy version never moves here)."""
    rng = np.random.default_rng(seed)
    return [Completion(rng.integers(0, shape.vocab, shape.tokens, dtype=np.int32),
                       -rng.exponential(1.0, shape.tokens).astype(np.float32), "length", float(rng.random()), 0)
            for _ in range(shape.n)]


# ----------------------------------------------------------------- hub side
@dataclass
class HubSpec:
    shape: Shape
    prompts: int = 256
    capacity: int = 256
    groups_per_step: int = 8
    max_staleness: int = 1000
    """Large: versions never move here, only the capacity bounds leasing."""
    lease_timeout_s: float = 60.0
    actor_timeout_s: float = 120.0
    peer_horizon_s: float | None = None
    seats: int = 1000
    curve_dir: str = ""
    max_abs_score: float = 1e4


def start_hub(spec: HubSpec, bind: str = "tcp://127.0.0.1:0") -> Hub:
    """A started Hub over a fresh ReplayBuffer with ``spec.prompts`` synthetic prompts."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, spec.shape.vocab, spec.shape.prompt_len, dtype=np.int32) for _ in range(spec.prompts)]
    buffer = ReplayBuffer(spec.prompts, capacity=spec.capacity, groups_per_step=spec.groups_per_step,
                          max_staleness=spec.max_staleness, lease_timeout_s=spec.lease_timeout_s)
    sampling = Sampling(n=spec.shape.n, temperature=1.0, top_p=1.0, max_tokens=spec.shape.tokens)
    hub = Hub(bind=bind, buffer=buffer, prompts=prompts, kinds=["math"] * spec.prompts,
              references=["0"] * spec.prompts, sampling=sampling, state=RunState(),
              metrics=HubMetrics(CollectorRegistry()), weight_group=None, manifest=[], seats=spec.seats,
              lease_timeout_s=spec.lease_timeout_s, vocab_size=spec.shape.vocab, max_abs_score=spec.max_abs_score,
              curve_dir=spec.curve_dir, peer_horizon_s=spec.peer_horizon_s, actor_timeout_s=spec.actor_timeout_s)
    hub.start()
    return hub


class Consumer(threading.Thread):
    """Stands in for the trainer: takes batches of ``k`` groups as they come (the policy
    version stays 0, so nothing is ever dropped for staleness)."""

    def __init__(self, buffer: ReplayBuffer, k: int, step_s: float = 0.0, keep_ids: bool = False):
        super().__init__(name="consumer", daemon=True)
        self.buffer, self.k, self.step_s, self.keep_ids = buffer, k, step_s, keep_ids
        self.taken = 0
        self._ids: list[tuple[str, int]] = []  # (actor id, prompt id) taken since the last drain_ids()
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def drain_ids(self) -> list[tuple[str, int]]:
        """(actor id, prompt id) of the groups taken since the last call (with keep_ids); handed
        out rather than kept, so that a long run's record does not grow this process."""
        with self._lock:
            ids, self._ids = self._ids, []
        return ids

    def run(self) -> None:
        while not self.stop.is_set():
            groups = self.buffer.take(self.k, 0, timeout_s=0.1)
            if not groups:
                continue
            self.taken += len(groups)
            if self.keep_ids:
                with self._lock:
                    self._ids.extend((g.actor_id, g.prompt_id) for g in groups)
            if self.step_s:
                time.sleep(self.step_s)


def counter(metric) -> dict[str, float]:
    """A prometheus counter's value(s): {label value or "": count}."""
    return {next(iter(s.labels.values()), ""): s.value for m in metric.collect() for s in m.samples
            if s.name.endswith("_total")}


def save(result: dict, out: str) -> None:
    """Write a bench's result as JSON (its folder made) and say where."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"wall {result['wall_s']:.0f} s -> {out}")


def rss_bytes(pid: int | None = None) -> int:
    import psutil
    return psutil.Process(pid or os.getpid()).memory_info().rss


# ----------------------------------------------------------------- actor side
class SimActor:
    """One actor without a model (see module doc). Not thread-safe: one ``drive`` loop owns it."""

    def __init__(self, ctx: zmq.Context, endpoint: str, actor_id: str, comps: list[Completion], *, window: int,
                 rate: float = 0.0, budget: int | None = None, curve: ClientKeys | None = None,
                 keep_ids: bool = False, restart_mean_s: float = 0.0, seed: int = 0):
        self.ctx, self.endpoint, self.base_id, self.comps, self.curve = ctx, endpoint, actor_id, comps, curve
        self.window, self.rate, self.budget, self.keep_ids = window, rate, budget, keep_ids
        self.batch = max(1, window // 2)
        self.restart_mean_s, self.rng = restart_mean_s, random.Random(seed)
        self.sent = self.accepted = self.restarts = 0
        self.refused: Counter = Counter()
        self.errors: Counter = Counter()
        self.ids: Counter = Counter()  # (actor id, prompt id) of accepted groups, with keep_ids
        self.acked_at: list[float] = []  # when each accepted ack arrived (monotonic)
        self.latency: list[float] = []  # send -> ack seconds, same order
        self.stopping = False
        self.sock: zmq.Socket | None = None
        self.gen = 0
        self.restart_at = self._next_restart(time.monotonic())
        self._connect(time.monotonic())

    def _next_restart(self, now: float) -> float:
        return now + self.rng.expovariate(1 / self.restart_mean_s) if self.restart_mean_s else float("inf")

    def _connect(self, now: float) -> None:
        """A fresh DEALER and hello: at start, and as a restarted actor (a new id, like a new pod)."""
        if self.sock is not None:
            self.sock.close(linger=0)
        self.actor_id = self.base_id if self.gen == 0 else f"{self.base_id}.r{self.gen}"
        self.sock = transport.dealer(self.ctx, self.endpoint, self.actor_id, curve=self.curve)
        self.joined = self.asking = False
        self.leased: deque = deque()  # (lease id, Prompt) leased and not yet sent
        self.sent_at: dict[tuple[int, int], float] = {}  # unacked groups
        self.next_ask = self.next_send = now
        transport.send(self.sock, Hello(self.actor_id, "sim", "none", os.getpid()))

    @property
    def idle(self) -> bool:
        """Nothing unacked (a stopping actor is done once idle)."""
        return not self.sent_at

    def handle(self, msg, now: float) -> None:
        if isinstance(msg, Welcome):
            self.joined = True
        elif isinstance(msg, Work):
            self.asking = False
            self.leased.extend((msg.lease_id, p) for p in msg.prompts)
            if not msg.prompts:  # nothing may be leased now: ask again when the hub says
                self.next_ask = now + msg.retry_after_s
        elif isinstance(msg, Ack):
            t = self.sent_at.pop((msg.lease_id, msg.prompt_id), None)
            if msg.accepted:
                self.accepted += 1
                self.acked_at.append(now)
                self.latency.append(now - t if t is not None else float("nan"))
                if self.keep_ids:
                    self.ids[(self.actor_id, msg.prompt_id)] += 1
            else:
                self.refused[msg.reason] += 1
        elif isinstance(msg, Error):
            self.errors[msg.reason] += 1
            self.joined, self.asking = False, False
            transport.send(self.sock, Hello(self.actor_id, "sim", "none", os.getpid()))

    def pump(self, now: float) -> float:
        """Send what is due (groups, a work request, a restart); returns when to be called next."""
        if now >= self.restart_at and self.idle and not self.stopping:
            # a crash between generations: leased prompts are abandoned (they expire at the hub),
            # nothing unacked is lost, so the ack accounting stays exact
            self.gen += 1
            self.restarts += 1
            self.restart_at = self._next_restart(now)
            self._connect(now)
        if not self.joined or self.stopping:
            return now + 0.05
        interval = 1.0 / self.rate if self.rate else 0.0
        while self.leased and len(self.sent_at) < self.window and now >= self.next_send:
            lease_id, p = self.leased.popleft()
            transport.send(self.sock, Trajectories(lease_id, self.actor_id, p.prompt_id, p.tokens, self.comps, {}))
            self.sent_at[(lease_id, p.prompt_id)] = now
            self.sent += 1
            if interval:  # no catch-up burst after a stall: a real actor generates at its own pace
                self.next_send = max(self.next_send, now - interval) + interval
        # lease in batches (as the real actor leases prompts_per_batch at a time), not one per ack
        left = float("inf") if self.budget is None else self.budget - self.sent - len(self.leased)
        want = int(min(self.window - len(self.sent_at) - len(self.leased), left))
        due = [self.restart_at, now + 0.05]
        if want > 0 and (want >= self.batch or want == left) and not self.asking:
            if now >= self.next_ask:
                transport.send(self.sock, WorkRequest(self.actor_id, want, 0))
                self.asking = True
            else:
                due.append(self.next_ask)
        if self.leased and len(self.sent_at) < self.window:
            due.append(self.next_send)
        return min(due)

    def leave(self) -> None:
        """Hand back what is leased and not sent, and the seat (what a stopping actor does)."""
        transport.send(self.sock, Release(self.actor_id, [], True))

    def close(self) -> None:
        self.sock.close(linger=0)

    def report(self) -> dict:
        return {"actor_id": self.base_id, "sent": self.sent, "accepted": self.accepted, "restarts": self.restarts,
                "refused": dict(self.refused), "errors": dict(self.errors), "unacked": len(self.sent_at)}


def drive(actors: list[SimActor], done: Callable[[float], bool], drain_s: float = 10.0) -> None:
    """Run ``actors`` in this thread until ``done(now)``; then stop them sending and wait (up
    to ``drain_s``) for the acks of what is in flight."""
    poller = zmq.Poller()
    owner: dict[zmq.Socket, SimActor] = {}
    stop_by = None
    while True:
        now = time.monotonic()
        if stop_by is None and done(now):
            stop_by = now + drain_s
            for a in actors:
                a.stopping = True
        if stop_by is not None and (now >= stop_by or all(a.idle for a in actors)):
            return
        wake = min(a.pump(now) for a in actors)
        for a in actors:  # (re)register sockets after pump: a restarted actor has a new one
            if a.sock not in owner:
                for s in [s for s, o in owner.items() if o is a]:
                    poller.unregister(s)
                    del owner[s]
                poller.register(a.sock, zmq.POLLIN)
                owner[a.sock] = a
        for sock, _ in poller.poll(max(0, min(50, int((wake - time.monotonic()) * 1000)))):
            a = owner[sock]
            while sock is a.sock:  # drain: one poll for all that is waiting
                try:
                    frames = transport.recv_frames(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = protocol.decode(frames)
                except protocol.ProtocolError as e:  # the hub never sends one; count it, go on
                    a.errors[f"decode:{e.reason}"] += 1
                    continue
                a.handle(msg, time.monotonic())


@dataclass
class ActorJob:
    """What one actor process runs (picklable for multiprocessing's spawn)."""

    endpoint: str
    ids: list[str]
    shape: Shape
    window: int
    rate: float = 0.0
    budget: int | None = None
    seconds: float = 0.0
    """Run this long (0: until every actor has sent its budget)."""
    curve_dir: str = ""
    keep_ids: bool = False
    restart_mean_s: float = 0.0
    leave: bool = False
    """Release leases and seats at the end."""
    extra: dict = field(default_factory=dict)


def run_actors(job: ActorJob, out, stop=None) -> None:
    """Process entry: run ``job``'s actors (until ``stop``, an Event, is set, if given), then put
    {"actors": [...], "ids", "acked_at", "latency"} on ``out``."""
    from common.keys import load_client
    ctx = zmq.Context()
    curve = load_client(job.curve_dir) if job.curve_dir else None
    comps = completions(job.shape, seed=os.getpid())
    actors = [SimActor(ctx, job.endpoint, i, comps, window=job.window, rate=job.rate, budget=job.budget,
                       curve=curve, keep_ids=job.keep_ids, restart_mean_s=job.restart_mean_s,
                       seed=zlib.crc32(i.encode()))  # not the index: actors in other processes share those
              for i in job.ids]
    t_end = time.monotonic() + job.seconds if job.seconds else float("inf")
    budget = job.budget

    def done(now: float) -> bool:
        return now >= t_end or (budget is not None and all(a.sent >= budget and a.idle for a in actors)) \
            or (stop is not None and stop.is_set())

    drive(actors, done)
    if job.leave:
        for a in actors:
            a.leave()
        time.sleep(0.5)
    ids: Counter = Counter()
    for a in actors:
        ids.update(a.ids)
    out.put({"actors": [a.report() for a in actors], "ids": dict(ids) if job.keep_ids else {},
             "acked_at": [t for a in actors for t in a.acked_at], "latency": [x for a in actors for x in a.latency]})
    for a in actors:
        a.close()
    ctx.destroy(linger=0)
