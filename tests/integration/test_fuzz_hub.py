"""Fuzzing the learner hub (issue 10, point 5; the long run is bench/fuzz_hub.py).

A real hub (learner.hub.Hub + ReplayBuffer, real ROUTER on loopback, no model)
gets random bytes, truncated msgpack, wrong schema versions, lying array
lengths, huge declared sizes, wrong types, valid-looking groups with
out-of-range values from a peer that holds a real lease, and a flood from many
identities, while a well-behaved client leases, sends groups and heartbeats.

Expected: the hub thread is alive and never crashed; every bad frame is counted
exactly once (the rejected counters sum to the bad frames sent); the lease
holder's bad groups are acked as refused with the right reason; the
well-behaved client gets every lease and ack it asks for. The per-peer maps
are pruned by age. Bounded: a fixed number of frames, a few seconds. The frame
generators are in tests/fuzzing.py, shared with the bench.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from common import transport
from common.protocol import Ack, Error, Heartbeat, Work, WorkRequest
from learner import hub as hub_module
from tests.fuzzing import liar_groups, malformed, sample_group, with_changes, wrong_but_decodable
from tests.unit.test_ingest_validation import (MAX_ABS_SCORE, N, SAMPLING, VOCAB, Peer, received, rejected,
                                               running_hub, wait_rejected)

SEED = 10


@pytest.fixture()
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


class GoodClient(threading.Thread):
    """Leases one prompt at a time and returns a valid group, then heartbeats; every request
    must be answered within the timeout, every group accepted."""

    def __init__(self, ctx: zmq.Context, hub, groups: int):
        super().__init__(daemon=True)
        self.peer, self.groups = Peer(ctx, hub, "good-actor"), groups
        self.stop, self.accepted, self.heartbeats = threading.Event(), 0, 0
        self.failure: str | None = None

    def run(self) -> None:
        while not self.stop.is_set() and self.failure is None:
            if self.accepted < self.groups:
                work = self.peer.ask(WorkRequest("good-actor", 1, 0))
                if not isinstance(work, Work) or len(work.prompts) != 1:
                    self.failure = f"lease refused: {work!r}"
                    return
                ack = self.peer.ask(self.peer.group(work))
                if not (isinstance(ack, Ack) and ack.accepted):
                    self.failure = f"group not accepted: {ack!r}"
                    return
                self.accepted += 1
            else:
                if not isinstance(self.peer.ask(Heartbeat("good-actor", 0, 0)), Heartbeat):
                    self.failure = "heartbeat unanswered"
                    return
                self.heartbeats += 1
            time.sleep(0.005)


def _answered(socks: list, timeout_s: float) -> int:
    """How many of ``socks`` got an answer to their heartbeat, all within one deadline (bounded when
    the hub is dead): a heartbeat, or "unknown_actor" for a peer that never said hello."""
    deadline = time.monotonic() + timeout_s
    return sum(_is_answer(transport.recv(s, max(0.0, deadline - time.monotonic()))) for s in socks)


def _is_answer(reply) -> bool:
    return isinstance(reply, Heartbeat) or (isinstance(reply, Error) and reply.reason == "unknown_actor")


def test_hub_survives_fuzz_and_counts_every_bad_frame(ctx):
    rng = np.random.default_rng(SEED)
    t0 = time.monotonic()
    with running_hub() as hub:
        good = GoodClient(ctx, hub, groups=24)
        good.start()

        # a peer holding a real lease sends valid-looking groups with out-of-range values, then
        # group-level lies; each is acked as refused with its reason
        liar = Peer(ctx, hub, "liar")
        work = liar.lease(credits=4)
        bad = 0
        for msg, reason in liar_groups(work, "liar", N, VOCAB, MAX_ABS_SCORE, SAMPLING.max_tokens):
            ack = liar.ask(msg)
            assert ack == Ack(msg.lease_id, msg.prompt_id, False, reason), (reason, ack)
            bad += 1

        # malformed frames from a handful of raw sockets, and decodable messages the hub refuses
        raws = [transport.dealer(ctx, hub.endpoint, f"raw-{i}") for i in range(4)]
        frames = malformed(rng, N) + wrong_but_decodable()
        for i, f in enumerate(frames):
            raws[i % len(raws)].send_multipart(f)
        bad += len(frames)
        assert wait_rejected(hub, bad, timeout_s=10) and hub.is_alive(), hub.error  # fail fast, not per reply

        # a flood from many identities: garbage, a valid heartbeat each (answered), more garbage
        flood = [transport.dealer(ctx, hub.endpoint, f"flood-{i}") for i in range(150)]
        for i, s in enumerate(flood):
            s.send_multipart([rng.bytes(16)])
            transport.send(s, Heartbeat(f"flood-{i}", 0, 0))
            s.send_multipart(with_changes(sample_group(f"flood-{i}", N), v=0))
        bad += 3 * len(flood)  # the heartbeat too: from a stranger, refused ("unknown_actor") and answered
        answered = _answered(flood, timeout_s=10)

        counts = wait_rejected(hub, bad, timeout_s=10)
        time.sleep(0.3)  # nothing more may arrive: a frame counted twice would show here
        counts = rejected(hub)
        # the liar goes on: its refused prompts went back to the queue (the hub keeps no lease
        # open for a group it refused), and leased again, a correct group is accepted
        again = liar.lease(credits=1)
        assert liar.ask(liar.group(again, 0)).accepted

        deadline = time.monotonic() + 20
        while good.accepted < good.groups and good.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        good.stop.set()
        good.join(timeout=10)
        assert good.failure is None, good.failure
        assert good.accepted == good.groups and good.heartbeats > 0
        assert answered == len(flood)
        assert sum(counts.values()) == bad, counts
        for reason in ("bad_header", "bad_version", "bad_frame", "too_large", "bad_field", "missing_field",
                       "bad_type", "unexpected_type", "token_out_of_vocab", "bad_score", "bad_logprob",
                       "bad_finish_reason", "group_size", "prompt_mismatch", "unknown_prompt", "unknown_lease"):
            assert counts.get(reason, 0) > 0, (reason, counts)
        # Welcome and Ack; the negative-credit request comes from a stranger, so it is unknown_actor
        assert counts["unexpected_type"] == 2
        assert received(hub) == good.groups + 1
        assert hub.is_alive() and hub.error is None
        hub.check()
    assert time.monotonic() - t0 < 60


def test_per_peer_maps_are_pruned(ctx, monkeypatch):
    # a horizon long enough for 200 peers to be registered on a loaded machine, short for a test
    monkeypatch.setattr(hub_module, "LOG_EVERY_S", 3.0)
    with running_hub(peer_horizon_s=3.0) as hub:
        keeper = Peer(ctx, hub, "keeper")
        socks = [transport.dealer(ctx, hub.endpoint, f"gone-{i}") for i in range(200)]
        for i, s in enumerate(socks):
            transport.send(s, Heartbeat(f"gone-{i}", 0, 0))
            s.send_multipart([b"\xc1"])  # logged once for this peer
        assert _answered(socks, timeout_s=10) == len(socks)
        wait_rejected(hub, len(socks))
        # each peer logged: its garbage frame, and its heartbeat without a hello ("unknown_actor")
        assert len(hub.last_seen) == len(socks) and len({peer for peer, _ in hub._logged}) == len(socks)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(hub.last_seen) > 1 or hub._logged):
            assert isinstance(keeper.ask(Heartbeat("keeper", 0, 0)), Heartbeat)  # a live peer stays
            time.sleep(0.05)
        assert list(hub.last_seen) == ["keeper"]
        assert hub._logged == {}
        assert hub.is_alive()


def test_a_member_pruned_from_last_seen_is_evicted_as_silent(ctx):
    # the peer horizon defaults to the actor timeout, so an actor that crashed for good is pruned
    # from last_seen in the same housekeeping pass that would find it silent: it must still lose
    # its seat (found by bench/soak.py: restarted actors under new ids held their old seats)
    with running_hub() as hub:
        hub.actor_timeout_s = hub.peer_horizon_s = 1.0
        gone, keeper = Peer(ctx, hub, "gone"), Peer(ctx, hub, "keeper")
        gone.lease()
        assert set(hub.members()) == {"gone"}
        deadline = time.monotonic() + 10
        while "gone" in hub.members() and time.monotonic() < deadline:
            assert isinstance(keeper.ask(Heartbeat("keeper", 0, 0)), Heartbeat)
            time.sleep(0.1)
        assert hub.members() == ("keeper",) and "gone" not in hub.last_seen
        assert hub.buffer.sizes() == (0, 0)  # its lease went back to the queue with its seat
