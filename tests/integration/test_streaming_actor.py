"""The actor streams (issue 10, point 1): a real Actor (HF engine, tiny random
model) against a real hub (learner.hub.Hub + ReplayBuffer, ROUTER on loopback).

The scorer is slowed down and both it and the engine record when they run, so
the test sees the pipeline's shape: batch k+1 generates while batch k is being
scored, groups leave one by one as each is scored (not after the whole batch),
at most ``send_window`` groups are ever unacked, and every group sent is
acked and accepted. When the hub says the run is over the actor stops cleanly
with no generation left running. A generation longer than the hub's
actor_timeout_s does not get the actor evicted as silent: it says it is alive.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from actors.actor import Actor, Shutdown
from actors.config import ActorConfig
from common import transport
from common.metrics import HubMetrics
from common.protocol import Sampling
from learner.buffer import ReplayBuffer
from learner.hub import Hub, RunState

SCORE_S = 0.15  # per group: four groups a batch take longer to score than a tiny model takes to generate
PROMPTS = [np.arange(5, 9 + i % 3, dtype=np.int32) for i in range(40)]


class Recorder:
    """Wraps an object and records (name, start, end) of calls to ``methods``."""

    def __init__(self, inner, methods: set[str], log: list, delay_s: float = 0.0):
        self._inner, self._methods, self._log, self._delay = inner, methods, log, delay_s

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def call(*args, **kwargs):
            t0 = time.monotonic()
            time.sleep(self._delay)
            out = attr(*args, **kwargs)
            self._log.append((name, t0, time.monotonic()))
            return out
        return call


def _hub(model: str, ctx: zmq.Context, **kw) -> tuple[Hub, ReplayBuffer, RunState, HubMetrics]:
    """A started hub over PROMPTS for ``model``'s vocabulary (``kw``: more Hub settings)."""
    from transformers import AutoConfig

    buffer = ReplayBuffer(len(PROMPTS), capacity=64, groups_per_step=8, max_staleness=3, lease_timeout_s=60.0)
    pub = transport.publisher(ctx, "tcp://127.0.0.1:0")
    state = RunState(pub_endpoint=transport.bound_endpoint(pub, "127.0.0.1"))
    metrics = HubMetrics(CollectorRegistry())
    hub = Hub(bind="tcp://127.0.0.1:0", buffer=buffer, prompts=PROMPTS, kinds=["math"] * len(PROMPTS),
              references=["1"] * len(PROMPTS), sampling=Sampling(n=2, temperature=1.0, top_p=1.0, max_tokens=6),
              state=state, metrics=metrics, weight_group=None, manifest=[], seats=4, lease_timeout_s=60.0,
              vocab_size=AutoConfig.from_pretrained(model).vocab_size, **kw)
    hub.start()
    return hub, buffer, state, metrics


def _serve(actor: Actor) -> tuple[threading.Thread, list]:
    """``actor.run()`` in a thread until the hub says the run is over; its failures, listed."""
    errors: list[BaseException] = []

    def serve():
        try:
            actor.run()
        except Shutdown:
            pass
        except BaseException as e:  # reported by the test: it must see the actor's own failure
            errors.append(e)
    thread = threading.Thread(target=serve)
    thread.start()
    return thread, errors


def _close(hub: Hub, actor: Actor, ctx: zmq.Context) -> None:
    hub.stop()
    actor.close()
    ctx.destroy(linger=0)


def _wait_for_groups(buffer: ReplayBuffer, n: int, thread: threading.Thread, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while buffer.sizes()[0] < n and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)


def test_generation_overlaps_scoring_and_groups_stream_within_the_window(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=4)
    ctx = zmq.Context()
    hub, buffer, state, _ = _hub(model, ctx)
    cfg = ActorConfig(learner=hub.endpoint, model=model, prompts_per_batch=4, send_window=3, metrics_port=0)
    cfg.validate()
    actor = Actor(cfg, 0)
    calls: list = []
    actor.engine = Recorder(actor.engine, {"generate"}, calls)
    actor.scorer = Recorder(actor.scorer, {"score"}, calls, delay_s=SCORE_S)
    # what the hub holds unacked for this actor, seen from the hub: groups in minus acks out
    sent_at: list[float] = []
    send = actor._send_group

    def watched_send(traj):
        sent_at.append(time.monotonic())
        assert len(actor.unacked) < cfg.send_window  # room for this one
        send(traj)
        assert len(actor.unacked) < cfg.send_window  # waited for acks beyond the window
    actor._send_group = watched_send
    thread, errors = _serve(actor)
    try:
        _wait_for_groups(buffer, 24, thread, timeout_s=120)
        state.stopping = "shutdown"
        thread.join(timeout=60)
    finally:
        _close(hub, actor, ctx)
    assert not errors, errors
    assert not thread.is_alive()
    assert hub.error is None
    assert buffer.sizes()[0] >= 24

    gens = [(a, b) for name, a, b in calls if name == "generate"]
    scores = [(a, b) for name, a, b in calls if name == "score"]
    assert len(gens) >= 6 and len(scores) >= 24
    # batch k+1 was generating while batch k was scored: some generation overlaps some scoring
    overlaps = sum(1 for ga, gb in gens for sa, sb in scores if ga < sb and sa < gb)
    assert overlaps >= 3, (gens, scores)
    # groups left one at a time as each was scored, not together at the end of the batch
    gaps = np.diff(sent_at)
    assert np.median(gaps) >= 0.8 * SCORE_S, gaps
    accepted = next(s.value for m in actor.metrics.sent.collect() for s in m.samples if s.name.endswith("_total"))
    assert accepted == buffer.sizes()[0]  # every group that reached the buffer was acked to the actor


def test_a_generation_longer_than_the_actor_timeout_keeps_the_seat(tmp_path):
    """Long chains of thought: a generation takes 3 s, the hub evicts an actor unheard of for
    1.5 s. The actor's heartbeats while it waits keep its seat, and its groups are accepted
    (an evicted actor's groups are refused, and it must say hello again)."""
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=4)
    ctx = zmq.Context()
    hub, buffer, state, metrics = _hub(model, ctx, actor_timeout_s=1.5)
    cfg = ActorConfig(learner=hub.endpoint, model=model, prompts_per_batch=2, metrics_port=0, heartbeat_s=0.3)
    actor = Actor(cfg, 0)
    actor.engine = Recorder(actor.engine, {"generate"}, [], delay_s=3.0)
    thread, errors = _serve(actor)
    try:
        _wait_for_groups(buffer, 6, thread, timeout_s=60)
        # (after the shutdown the stopped actor falls silent and is evicted: counted before)
        evictions = sum(s.value for m in metrics.evictions.collect() for s in m.samples if s.name.endswith("_total"))
        state.stopping = "shutdown"
        thread.join(timeout=60)
    finally:
        _close(hub, actor, ctx)
    assert not errors, errors
    assert buffer.sizes()[0] >= 6  # three generations of 3 s each, all accepted
    assert evictions == 0
    joins = next(s.value for m in metrics.joins.collect() for s in m.samples if s.name.endswith("_total"))
    assert joins == 1  # never had to say hello again
