"""The version race (issue 10): the (broadcast seq, policy version) pair is one
immutable value, written whole and read once, on the learner (RunState.weights,
written by the broadcaster thread, read by the hub thread) and on the actor
(held/pending, written by the actor loop, read by the metrics thread).

Writers and readers are hammered from threads; a pair is consistent when
version == K * seq. With the GIL, CPython switches threads only at calls and
backward jumps, so two plain attribute stores in a row are almost never torn
and a naive hammer proves nothing. The objects under test therefore yield the
GIL before every load and store of the watched attributes (``_Yielding``),
which is what a free-threaded interpreter may do anywhere: code that reads or
writes the pair field by field then tears at once, code that stores and loads
one immutable value cannot. ``test_harness_catches_a_field_by_field_writer``
shows the harness catching the old write and read order.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry

from actors.actor import Actor
from actors.weights import WeightFollower
from common.metrics import ActorMetrics, WeightSyncMetrics
from common.protocol import Heartbeat, Hello, WeightRef
from common.weight_sync import Rendezvous
from learner.broadcaster import Broadcaster
from learner.hub import RunState
from tests.unit.test_ingest_validation import running_hub

K = 7  # version = K * seq in every pair the writers publish
SECONDS = 0.6
READERS = 3


@contextmanager
def _fast_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, so that readers interleave with the writer."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class _Yielding:
    """Mixin: a thread switch before every load and store of the version attributes."""

    WATCHED = frozenset({"weights", "weight_seq", "weight_version", "held", "pending", "version", "seq",
                         "pending_seq", "pending_version"})

    def __getattribute__(self, name: str):
        if name in _Yielding.WATCHED:
            time.sleep(0)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _Yielding.WATCHED:
            time.sleep(0)
        super().__setattr__(name, value)


class _YieldingState(_Yielding, RunState):
    pass


class _YieldingActor(_Yielding, Actor):
    pass


def _hammer(write: Callable[[int], None], read: Callable[[], tuple[int, int]]) -> tuple[int, list]:
    """Run ``write(1), write(2), ...`` against READERS threads calling ``read()``; returns
    (pairs read, mixed pairs seen)."""
    stop = threading.Event()
    mixed: list = []
    reads = [0] * READERS

    def reader(i: int) -> None:
        while not stop.is_set():
            seq, version = read()
            reads[i] += 1
            if version != K * seq:
                mixed.append((seq, version))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    with _fast_switching():
        for t in threads:
            t.start()
        deadline, k = time.monotonic() + SECONDS, 0
        while time.monotonic() < deadline:
            k += 1
            write(k)
        stop.set()
        for t in threads:
            t.join()
    assert k > 100 and sum(reads) > 100, (k, reads)  # the hammer did hammer
    return sum(reads), mixed


class _OldState(_Yielding, SimpleNamespace):
    pass


def test_harness_catches_a_field_by_field_writer():
    state = _OldState(weight_seq=0, weight_version=0)

    def write(k: int) -> None:  # the old broadcaster: version, then seq
        state.weight_version, state.weight_seq = K * k, k

    def read() -> tuple[int, int]:  # the old hub: version, then seq
        version, seq = state.weight_version, state.weight_seq
        return seq, version

    _, mixed = _hammer(write, read)
    assert mixed, "the harness did not catch a torn write: the tests below would prove nothing"


class _StubGroup:
    """Stands in for the weight group: the broadcast itself is not under test here."""

    def broadcast(self, named: list, ready=None) -> int:
        return 0


def test_learner_hub_never_hands_out_a_mixed_pair():
    state = _YieldingState()
    b = Broadcaster(pub_bind="tcp://127.0.0.1:0", advertise_host="127.0.0.1", spec=None, device=torch.device("cpu"),
                    state=state,
                    metrics=WeightSyncMetrics(CollectorRegistry(), "learner"))
    group = _StubGroup()
    try:
        with running_hub() as hub:
            hub.state = state  # the hub reads what this broadcaster writes, as in learner/worker.py

            def write(k: int) -> None:
                b._broadcast(group, K * k, [], None)  # the real writer: announce, then publish the pair

            def read() -> tuple[int, int]:
                reply = hub._heartbeat(b"peer", Heartbeat("a", 0, 0)) if read.n % 2 else \
                    hub._hello(b"peer", Hello("a", "hf", "m", 1))
                read.n += 1
                return (reply.weight_seq, reply.policy_version)
            read.n = 0

            n, mixed = _hammer(write, read)
        assert not mixed, f"{len(mixed)} of {n} replies paired a seq with another broadcast's version: {mixed[:5]}"
        assert state.weights.seq > 100 and state.weights.version == K * state.weights.seq
    finally:
        b.ctx.destroy(linger=0)


class _StubEngine:
    """Joins and receives instantly: the weight transfer itself is not under test here."""

    def join_weight_group(self, spec, manifest) -> None:
        pass

    def leave_weight_group(self) -> None:
        pass

    def receive_weights(self) -> int:
        return 0


class _YieldingFollower(_Yielding, WeightFollower):
    pass


def _bare_actor() -> Actor:
    """An Actor without engine, sockets or metrics server: its version bookkeeping, following a
    real rendezvous (an in-process store) in which the test plays the learner."""
    a = _YieldingActor.__new__(_YieldingActor)
    registry = CollectorRegistry()
    a.index, a.actor_id = 0, "a"
    a.metrics = ActorMetrics(registry)
    a.pending = WeightRef(0, 0)
    a.weights = _YieldingFollower(_StubEngine(), "a", WeightSyncMetrics(registry, "actor"), WeightRef(0, 0))
    a.weights.rdv = Rendezvous(dist.HashStore())
    a.weights.group = {"host": "-", "port": 0, "backend": "gloo", "timeout_s": 5.0}
    a.weights.rdv.publish_generation(1, ["a"])
    return a


def test_actor_never_reports_a_mixed_pair():
    a = _bare_actor()

    def write(k: int) -> None:  # the learner broadcasts; the weights arrive between generations
        a.weights.rdv.publish_broadcast(1, k, k, K * k)
        a.weights.sync()

    def read() -> tuple[int, int]:
        h = a._health()  # what the metrics thread serves
        return h["weight_seq"], h["policy_version"]

    n, mixed = _hammer(write, read)
    assert not mixed, f"{len(mixed)} of {n} reads were mixed: {mixed[:5]}"
    assert a.held.seq > 100 and a.held.version == K * a.held.seq


def test_actor_ignores_an_older_announcement():
    a = _bare_actor()
    a._note_seq(3, 21)
    a._note_seq(2, 14)  # a late PUB message after a hub reply that was ahead
    assert a.pending == WeightRef(3, 21)
    a.weights.rdv.publish_broadcast(1, 1, 3, 21)
    a.weights.sync()
    assert a.held == WeightRef(3, 21)


def test_weight_ref_is_immutable():
    w = WeightRef(1, 2)
    with pytest.raises(AttributeError):
        w.seq = 3
