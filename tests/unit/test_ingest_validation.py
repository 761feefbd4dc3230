"""Semantic validation at ingest (issue 10, point 3): values that would poison
training are refused with one reason each, counted in
flowrl_hub_rejected_messages_total{reason}, and acked as not accepted; the
peer and everyone else go on.

The hub here is the real one (learner.hub.Hub + ReplayBuffer, real ROUTER on
loopback); no model is needed. ``running_hub`` and ``Peer`` are shared with
tests/unit/test_curve.py and tests/integration/test_fuzz_hub.py.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from common import transport
from common.config import ConfigError
from common.keys import ClientKeys
from common.metrics import HubMetrics
from common.protocol import (Ack, Completion, Heartbeat, Hello, ProtocolError, Sampling, Trajectories, Welcome, Work,
                             WorkRequest, decode, encode)
from learner.buffer import ReplayBuffer
from learner.config import LearnerConfig
from learner.hub import Hub, RunState

VOCAB = 100
MAX_ABS_SCORE = 50.0
N = 2  # completions per group
PROMPTS = [np.arange(1, 4 + i % 5, dtype=np.int32) for i in range(64)]
SAMPLING = Sampling(n=N, temperature=1.0, top_p=1.0, max_tokens=8)


@contextmanager
def running_hub(curve_dir: str = "", peer_horizon_s: float | None = None,
                groups_per_step: int = 16, seats: int = 1000) -> Iterator[Hub]:
    """A started hub on a free loopback port; nothing trains, so leased work piles up in the buffer."""
    buffer = ReplayBuffer(len(PROMPTS), capacity=256, groups_per_step=groups_per_step, max_staleness=3,
                          lease_timeout_s=60.0)
    hub = Hub(bind="tcp://127.0.0.1:0", buffer=buffer, prompts=PROMPTS, kinds=["math"] * len(PROMPTS),
              references=[str(i) for i in range(len(PROMPTS))], sampling=SAMPLING, state=RunState(),
              metrics=HubMetrics(CollectorRegistry()), weight_group=None, manifest=[], seats=seats,
              lease_timeout_s=60.0, vocab_size=VOCAB, max_abs_score=MAX_ABS_SCORE, curve_dir=curve_dir,
              peer_horizon_s=peer_horizon_s)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
    assert hub.error is None, hub.error


def rejected(hub: Hub) -> dict[str, float]:
    """{reason: count} of flowrl_hub_rejected_messages_total."""
    out = {}
    for metric in hub.metrics.rejected.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[s.labels["reason"]] = s.value
    return out


def received(hub: Hub) -> float:
    """flowrl_hub_groups_received_total."""
    return next(s.value for m in hub.metrics.received.collect() for s in m.samples if s.name.endswith("_total"))


def wait_rejected(hub: Hub, total: float, timeout_s: float = 5.0) -> dict[str, float]:
    """The counters once they sum to ``total`` (the hub counts asynchronously); fails after the timeout."""
    deadline = time.monotonic() + timeout_s
    while sum(rejected(hub).values()) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    return rejected(hub)


class Peer:
    """One DEALER talking to the hub, as an actor would."""

    def __init__(self, ctx: zmq.Context, hub: Hub, actor_id: str, curve: ClientKeys | None = None):
        self.actor_id = actor_id
        self.sock = transport.dealer(ctx, hub.endpoint, actor_id, curve=curve)
        self.joined = False

    def ask(self, msg, timeout_s: float = 5.0):
        """Send ``msg`` and return the reply (None: none in time). Says hello first, as an
        actor must: the hub answers anything else from a stranger with "unknown_actor"."""
        if not self.joined and not isinstance(msg, Hello) and getattr(msg, "actor_id", "probe") != "probe":
            transport.send(self.sock, Hello(msg.actor_id, "hf", "m", 1))
            welcome = transport.recv(self.sock, timeout_s)
            if not isinstance(welcome, Welcome):
                return welcome
            self.joined = True
        transport.send(self.sock, msg)
        return transport.recv(self.sock, timeout_s)

    def lease(self, credits: int = 1) -> Work:
        work = self.ask(WorkRequest(self.actor_id, credits, 0))
        assert isinstance(work, Work) and len(work.prompts) == credits, work
        return work

    def group(self, work: Work, i: int = 0, **change) -> Trajectories:
        """A valid group for prompt ``i`` of ``work``, with ``change`` applied to its first completion."""
        p = work.prompts[i]
        comps = [Completion(np.array([5, 6, 7], dtype=np.int32), np.full(3, -0.5, dtype=np.float32), "stop", 1.0, 0)
                 for _ in range(N)]
        for k, v in change.items():
            setattr(comps[0], k, v)
        return Trajectories(work.lease_id, self.actor_id, p.prompt_id, p.tokens, comps, {})


@pytest.fixture()
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


# ----------------------------------------------------------------- decode
def _traj(**change) -> Trajectories:
    comps = [Completion(np.array([1, 2], dtype=np.int32), np.array([-0.1, -2.0], dtype=np.float32), "length", 0.5, 3)
             for _ in range(3)]
    for k, v in change.items():
        setattr(comps[1], k, v)
    return Trajectories(8, "a", 9, np.arange(4, dtype=np.int32), comps, {})


@pytest.mark.parametrize("change,reason", [
    (dict(finish_reason="eos"), "bad_finish_reason"),
    (dict(finish_reason=""), "bad_finish_reason"),
    (dict(score=float("nan")), "bad_score"),
    (dict(score=float("inf")), "bad_score"),
    (dict(score=float("-inf")), "bad_score"),
    (dict(logprobs=np.array([-0.1, 0.3], dtype=np.float32)), "bad_logprob"),
    (dict(logprobs=np.array([np.nan, -1.0], dtype=np.float32)), "bad_logprob"),
    (dict(logprobs=np.array([-np.inf, -1.0], dtype=np.float32)), "bad_logprob"),
    (dict(logprobs=np.array([-1.0, np.inf], dtype=np.float32)), "bad_logprob"),
], ids=lambda x: str(x) if isinstance(x, str) else None)
def test_decode_refuses_each_bad_value_with_its_reason_and_keeps_the_ids(change, reason):
    with pytest.raises(ProtocolError) as e:
        decode(encode(_traj(**change)))
    assert e.value.reason == reason
    # well-formed: the hub can answer it with a refusing ack
    assert isinstance(e.value.message, Trajectories)
    assert (e.value.message.lease_id, e.value.message.prompt_id) == (8, 9)


def test_decode_accepts_edge_values():
    msg = _traj(logprobs=np.array([0.0, -1e30], dtype=np.float32), score=-1e300)
    out = decode(encode(msg))
    assert out.completions[1].score == -1e300  # the bound is the hub's, from the run's config


def test_malformed_messages_carry_no_message():
    frames = encode(_traj())
    with pytest.raises(ProtocolError) as e:
        decode(frames[:-1])
    assert e.value.reason == "bad_frame" and e.value.message is None


# ----------------------------------------------------------------- hub
@pytest.mark.parametrize("change,reason", [
    (dict(tokens=np.array([5, VOCAB, 7], dtype=np.int32)), "token_out_of_vocab"),
    (dict(tokens=np.array([5, -1, 7], dtype=np.int32)), "token_out_of_vocab"),
    (dict(tokens=np.array([2**31 - 1, 1, 1], dtype=np.int32)), "token_out_of_vocab"),
    (dict(score=MAX_ABS_SCORE * 1.01), "bad_score"),
    (dict(score=-MAX_ABS_SCORE * 2), "bad_score"),
    (dict(score=float("nan")), "bad_score"),
    (dict(score=3.4e39), "bad_score"),  # above float32's range
    (dict(logprobs=np.array([-1.0, 1e-3, -1.0], dtype=np.float32)), "bad_logprob"),
    (dict(logprobs=np.array([-1.0, np.nan, -1.0], dtype=np.float32)), "bad_logprob"),
    (dict(finish_reason="abort"), "bad_finish_reason"),
], ids=lambda x: str(x) if isinstance(x, str) else None)
def test_hub_refuses_acks_and_counts_by_reason(ctx, change, reason):
    with running_hub() as hub:
        peer, other = Peer(ctx, hub, "actor-a"), Peer(ctx, hub, "actor-b")
        work = peer.lease(credits=2)
        ack = peer.ask(peer.group(work, 0, **change))
        assert ack == Ack(work.lease_id, work.prompts[0].prompt_id, False, reason)
        assert rejected(hub) == {reason: 1.0}
        # its prompt is back at the front of the queue now, not at the lease's deadline
        assert hub.buffer.pending[0] == work.prompts[0].prompt_id and hub.buffer.sizes() == (0, 1)
        # the same peer goes on: its next group on the same lease is accepted
        assert peer.ask(peer.group(work, 1)).accepted
        # and so does everyone else
        w2 = other.lease()
        assert other.ask(other.group(w2)).accepted
        assert received(hub) == 2
        assert hub.is_alive()


def test_in_vocab_edges_are_accepted(ctx):
    with running_hub() as hub:
        peer = Peer(ctx, hub, "actor-a")
        work = peer.lease()
        ack = peer.ask(peer.group(work, tokens=np.array([0, VOCAB - 1, 0], dtype=np.int32), score=-MAX_ABS_SCORE))
        assert ack.accepted, ack
        assert rejected(hub) == {}


def test_hub_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="vocab_size"):
        Hub(bind="tcp://127.0.0.1:0", buffer=None, prompts=[], kinds=[], references=[], sampling=SAMPLING,
            state=RunState(), metrics=None, weight_group=None, manifest=[], seats=0, lease_timeout_s=1.0,
            vocab_size=0)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), 1e16])
def test_max_abs_score_is_validated(value):
    with pytest.raises(ConfigError, match="max_abs_score"):
        LearnerConfig(max_abs_score=value).validate()


def test_max_abs_score_default_is_valid():
    cfg = LearnerConfig()
    cfg.validate()
    assert cfg.max_abs_score == 1e4


def test_heartbeat_unaffected(ctx):
    with running_hub() as hub:
        reply = Peer(ctx, hub, "actor-a").ask(Heartbeat("actor-a", 0, 0))
        assert isinstance(reply, Heartbeat)
