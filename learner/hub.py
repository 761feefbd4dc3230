"""The learner's ZeroMQ side (rank 0): one ROUTER socket carries the whole
conversation with actors (hello, work leasing, trajectory ingest, acks,
heartbeats) and feeds the replay buffer. Runs in its own thread; a crash in it
is re-raised in the trainer by ``check()``.

Malformed or inconsistent messages are dropped and counted in
``flowrl_hub_rejected_messages_total{reason}``, logged once per peer per
minute; the peer and everyone else go on. A trajectory group that is
well-formed but carries refused values (common/protocol.py ``_check_values``;
here: token ids outside the model's vocabulary, |score| above
``max_abs_score``) is also answered with ``Ack(accepted=False, reason)``, and its
prompt goes back in the queue at once (given up for the epoch after three refusals).

Identity rule (CURVE on, ``curve_dir``): the ZAP handler names the client key
of every message (its ``User-Id``). The first message that carries a given
``actor_id`` binds that id to the key it came with; a later message with the
same ``actor_id`` and another key is dropped and counted as ``identity``. The
binding lasts while the actor is heard from within ``peer_horizon_s`` (by
default at least ``lease_timeout_s``, so it outlives every lease the actor can
still complete); after that the id is free again. With CURVE off there is no
key to bind to and ids are taken on trust.

Per-peer state (``last_seen``, the key bindings, the once-a-minute log marks)
is pruned by age, so a flood of identities costs memory only for as long as
the horizon.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import zmq

from common import transport
from common.metrics import HubMetrics
from common.keys import load_server
from common.protocol import (Ack, Error, Heartbeat, Hello, ProtocolError, Prompt, Release, Sampling,
                             Trajectories, Welcome, WeightRef, Work, WorkRequest, decode)
from learner.buffer import Group, ReplayBuffer

log = logging.getLogger("learner.hub")

ACTOR_TIMEOUT_S = 120.0  # an actor unheard of for this long no longer counts as connected
LOG_EVERY_S = 60.0  # a (peer, reason) pair is logged at most once per this
HOUSEKEEPING_S = 0.2  # gauges and pruning run at most this often, not per message
DRAIN_MAX = 64  # messages handled (and replies held back) per poll at most


@dataclass
class RunState:
    """What the trainer and broadcaster publish for the hub to hand out."""

    policy_version: int = 0
    """The learner's current version (optimizer steps taken)."""
    weights: WeightRef = WeightRef(seq=0, version=0)
    """Broadcasts started so far and the policy version the last one carries: what an actor
    holds once caught up. Replaced as a whole (one attribute store); readers take it once."""
    pub_endpoint: str = ""
    stopping: str = ""
    """Empty while the run goes on; "shutdown" (the run is over: actors exit) or "stopping"
    (this learner is going away and will be back: actors reconnect)."""


def _touch(d: dict, key, now: float) -> None:
    """Set ``d[key] = now`` keeping ``d`` ordered oldest first (dicts keep insertion order)."""
    d.pop(key, None)
    d[key] = now


def _prune(d: dict, cutoff: float) -> list:
    """Drop and return the keys of ``d`` last touched before ``cutoff``; O(number dropped)."""
    gone = []
    for key, t in d.items():
        if t >= cutoff:
            break
        gone.append(key)
    for key in gone:
        del d[key]
    return gone


def _same_tokens(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)``; for integer arrays of one dtype, by their bytes (a tenth of the time)."""
    if isinstance(b, np.ndarray) and a.dtype == b.dtype and a.dtype.kind in "iu" and a.ndim == b.ndim == 1:
        return len(a) == len(b) and a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


class Hub(threading.Thread):
    def __init__(self, *, bind: str, buffer: ReplayBuffer, prompts: list[np.ndarray], kinds: list[str],
                 references: list[str], sampling: Sampling, state: RunState, metrics: HubMetrics,
                 weight_group: dict | None, manifest: list, seats: int, lease_timeout_s: float,
                 vocab_size: int, max_abs_score: float = 1e4, curve_dir: str = "",
                 peer_horizon_s: float | None = None, min_actors: int = 1, max_staleness: int = 0,
                 actor_timeout_s: float = ACTOR_TIMEOUT_S):
        super().__init__(name="hub", daemon=True)
        if vocab_size < 1 or not max_abs_score > 0:
            raise ValueError(f"Hub: vocab_size {vocab_size} must be >= 1 and max_abs_score {max_abs_score} > 0")
        self.buffer, self.prompts, self.kinds, self.references = buffer, prompts, kinds, references
        self.sampling, self.state, self.metrics = sampling, state, metrics
        self.weight_group, self.manifest, self.seats = weight_group, manifest, seats
        self.min_actors, self.max_staleness, self.actor_timeout_s = min_actors, max_staleness, actor_timeout_s
        self.lease_timeout_s = lease_timeout_s
        self.vocab_size, self.max_abs_score = vocab_size, max_abs_score
        self.peer_horizon_s = max(actor_timeout_s, lease_timeout_s) if peer_horizon_s is None else peer_horizon_s
        self.run_id = uuid.uuid4().hex[:12]
        self.ctx = zmq.Context()
        keys = load_server(curve_dir) if curve_dir else None
        # the ZAP handler must answer before the first client connects: start it before binding
        self.auth = transport.start_authenticator(self.ctx, keys) if keys is not None else None
        self.sock = transport.router(self.ctx, bind, curve=keys)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._membership: tuple[int, tuple[str, ...]] = (0, ())
        """(epoch, actors holding a seat in joining order): one value, replaced whole under
        _members_lock (the broadcaster reads it from its thread). The epoch counts every change,
        a member's new session included, which leaves the ids as they were."""
        self._members_lock = threading.Lock()
        self.started = False
        """Set once min_actors have joined; no work is leased before."""
        self.last_seen: dict[str, float] = {}  # actor id -> last heard (monotonic), oldest first
        self.key_of: dict[str, str] = {}  # actor id -> CURVE key it is bound to (CURVE on only)
        self._logged: dict[tuple[bytes, str], float] = {}  # (peer, reason) -> last logged, oldest first
        self._housekept = 0.0
        self._mirrored = {"expired": 0, "dropped_stale": 0, "released": 0, "given_up": 0}
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self._outbox: list[tuple[bytes, object]] = []  # replies of the batch being handled
        self._handlers = {Hello: self._hello, WorkRequest: self._work, Trajectories: self._trajectories,
                          Heartbeat: self._heartbeat, Release: self._release}

    # ------------------------------------------------------------ thread
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.sock.poll(100):
                    # drain what is waiting (a bounded batch, so housekeeping still runs under a
                    # flood) rather than one poll a message, and send the replies after it: polls
                    # and wake-ups of zmq's I/O thread cost as much as a small message's handling
                    for _ in range(DRAIN_MAX):
                        try:
                            frames = transport.recv_frames(self.sock, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        key = transport.peer_key(frames[0]) if self.auth is not None else None
                        self._handle(frames[0].bytes, frames[1:], key)
                    self._flush()
                now = time.monotonic()
                if now - self._housekept >= HOUSEKEEPING_S:
                    self._housekept = now
                    self._prune(now)
                    self._gauges()
        except BaseException as e:  # re-raised in the trainer by check(): the run must not hang
            self.error = e
            raise

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"hub thread crashed: {self.error!r}") from self.error
        if not self.is_alive() and not self._stopping.is_set():
            raise RuntimeError("hub thread exited")

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)

    # ------------------------------------------------------------ dispatch
    def _reject(self, peer: bytes, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged.get((peer, reason), -1e9) > LOG_EVERY_S:
            _touch(self._logged, (peer, reason), now)
            log.warning("dropped message from %r: %s: %s", peer[:40], reason, detail)

    def _handle(self, peer: bytes, frames: list, key: str | None = None) -> None:
        """One message from ``peer``; ``key`` is its CURVE public key (None: CURVE off)."""
        refused: ProtocolError | None = None
        try:
            msg = decode(frames)
        except ProtocolError as e:
            if e.message is None:  # malformed: not even its ids can be trusted, drop it unanswered
                self._reject(peer, e.reason, e.detail)
                return
            msg, refused = e.message, e  # well-formed, refused values: answered below
        if self.state.stopping:
            detail = "the run is over" if self.state.stopping == "shutdown" else "the learner is stopping"
            self._reply(peer, Error(self.state.stopping, detail))
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._reject(peer, "unexpected_type", type(msg).__name__)
            return
        probe = isinstance(msg, Heartbeat) and msg.actor_id == "probe"  # the launcher's reachability check
        if not probe:
            if not self._owns(msg.actor_id, key):
                self._reject(peer, "identity", f"actor id {msg.actor_id!r} is bound to another key")
                return
            _touch(self.last_seen, msg.actor_id, time.monotonic())
            if not isinstance(msg, Hello) and msg.actor_id not in self.members():
                # a restarted learner, or an actor evicted meanwhile: it must say hello again
                self._reject(peer, "unknown_actor", f"{type(msg).__name__} from {msg.actor_id!r}, no seat")
                self._reply(peer, Error("unknown_actor", "say hello again"))
                return
        if refused is not None:
            self._reject(peer, refused.reason, refused.detail)
            self.buffer.refuse(msg.lease_id, msg.actor_id, msg.prompt_id)  # back in the queue now
            reply = Ack(msg.lease_id, msg.prompt_id, False, refused.reason)
        else:
            reply = handler(peer, msg)
        if reply is not None:
            self._reply(peer, reply)

    def _reply(self, peer: bytes, msg) -> None:
        self._outbox.append((peer, msg))

    def _flush(self) -> None:
        """Send the replies of a drained batch back to back: each send that finds zmq's I/O
        thread asleep wakes it, and a wake-up costs more than a small message's handling."""
        for peer, msg in self._outbox:
            transport.send(self.sock, msg, peer)
        self._outbox.clear()

    def _owns(self, actor_id: str, key: str | None) -> bool:
        """Whether ``key`` may speak for ``actor_id``; binds a new id to it (see module doc)."""
        if key is None:
            return True
        return self.key_of.setdefault(actor_id, key) == key

    def _prune(self, now: float) -> None:
        """Forget peers unheard of for the horizon, and log marks past their minute."""
        for actor_id in _prune(self.last_seen, now - self.peer_horizon_s):
            self.key_of.pop(actor_id, None)
        _prune(self._logged, now - LOG_EVERY_S)

    # ------------------------------------------------------------ membership
    def members(self) -> tuple[str, ...]:
        """The actors holding a seat, in joining order (any thread)."""
        return self._membership[1]

    def membership(self) -> tuple[int, tuple[str, ...]]:
        """(epoch, members), read as one value (any thread): a new epoch is a new weight group."""
        return self._membership

    def evict(self, actor_ids, reason: str) -> None:
        """Take seats away (any thread): failed a broadcast, went silent, left. Their leases
        are re-queued at once; if they are alive they must say hello again."""
        with self._members_lock:
            epoch, members = self._membership
            gone = [a for a in members if a in set(actor_ids)]
            if gone:
                self._membership = (epoch + 1, tuple(a for a in members if a not in set(actor_ids)))
        for actor_id in gone:
            self.buffer.release(actor_id)
            if reason == "left":
                self.metrics.leaves.inc()
            else:
                self.metrics.evictions.labels(reason).inc()
            log.warning("actor %s removed from the run: %s", actor_id, reason)

    def _hello(self, peer: bytes, msg: Hello):
        with self._members_lock:
            epoch, members = self._membership
            new = msg.actor_id not in members
            if new and len(members) >= self.seats:
                return Error("full", f"all {self.seats} actor seats are taken; retry later")
            # a member's hello is a new session (it lost the learner for a while and reconnected):
            # its old session's work will never be acked and it left its weight group, so both
            # start over (a new epoch re-forms the group even though the ids stay the same)
            self._membership = (epoch + 1, members + (msg.actor_id,) if new else members)
            self.started = self.started or len(self._membership[1]) >= self.min_actors
        if new:
            self.metrics.joins.inc()
            log.info("actor %s (%s, pid %d) joined: %d member(s)", msg.actor_id, msg.engine, msg.pid,
                     len(self._membership[1]))
        else:
            released = self.buffer.release(msg.actor_id)
            log.info("actor %s started a new session: %d prompt(s) of the old one handed back", msg.actor_id,
                     released)
        weights = self.state.weights  # read once: seq and version from the same broadcast
        return Welcome(self.run_id, weights.version, weights.seq, self.state.pub_endpoint, self.weight_group,
                       self.manifest if self.weight_group is not None else [])

    def _work(self, peer: bytes, msg: WorkRequest):
        if msg.credits < 0:
            self._reject(peer, "bad_field", "negative credits")
            return None
        # Work generated with the weights this actor holds must still be trainable when it
        # comes back: keyed on the actor's version, not the learner's, so an actor a broadcast
        # behind (or a newcomer without the current weights) gets nothing until it catches up.
        # The buffer sizes the lease so that it is trained before it is max_staleness old.
        learner = self.state.policy_version
        # an actor ahead of the learner holds weights of another run (one restarted from an
        # earlier step): it gets nothing until this learner's weights reach it
        fresh = 0 <= learner - msg.policy_version <= self.max_staleness and msg.policy_version >= 0
        lease_id, ids = 0, []
        if self.started and fresh:
            lease_id, ids = self.buffer.lease(msg.actor_id, msg.credits, msg.policy_version, learner)
        prompts = [Prompt(i, self.kinds[i], self.references[i], self.prompts[i]) for i in ids]
        weights = self.state.weights  # read once: seq and version from the same broadcast
        return Work(lease_id, weights.version, weights.seq, self.lease_timeout_s,
                    self.sampling, prompts, retry_after_s=0.0 if ids else 0.2)

    def _release(self, peer: bytes, msg: Release):
        n = self.buffer.release(msg.actor_id, msg.lease_ids or None)
        log.info("actor %s handed back %d prompt(s)%s", msg.actor_id, n, "; leaving" if msg.leaving else "")
        if msg.leaving:
            self.evict([msg.actor_id], "left")
        weights = self.state.weights
        return Heartbeat("learner", weights.version, weights.seq)

    def _trajectories(self, peer: bytes, msg: Trajectories):
        reason = self._inconsistent(msg)
        if reason is None:
            group = Group(msg.prompt_id, msg.prompt_tokens, msg.completions, msg.actor_id)
            reason = self.buffer.complete(msg.lease_id, group) or None
        if reason is not None:
            self._reject(peer, reason, f"lease {msg.lease_id} prompt {msg.prompt_id}")
            # back in the queue now, not at the lease's deadline (a no-op unless the lease is
            # this actor's and holds the prompt: nobody hands back another's work)
            self.buffer.refuse(msg.lease_id, msg.actor_id, msg.prompt_id)
            return Ack(msg.lease_id, msg.prompt_id, False, reason)
        self.metrics.received.inc()
        return Ack(msg.lease_id, msg.prompt_id, True, "")

    def _inconsistent(self, msg: Trajectories) -> str | None:
        """The first reason, in this order, to refuse a decoded group; None if there is none.
        Costs a few numpy calls a group, not a few a completion: this runs for every group."""
        if not 0 <= msg.prompt_id < len(self.prompts):
            return "unknown_prompt"
        if not _same_tokens(msg.prompt_tokens, self.prompts[msg.prompt_id]):
            return "prompt_mismatch"
        comps = msg.completions
        if len(comps) != self.sampling.n:
            return "group_size"
        version, max_tokens, max_abs = self.state.policy_version, self.sampling.max_tokens, self.max_abs_score
        bad_score = bad_version = too_long = False
        for c in comps:
            bad_score |= abs(c.score) > max_abs  # float32 overflow turns it into inf, then NaN advantages
            bad_version |= c.version > version or c.version < 0
            too_long |= len(c.tokens) > max_tokens
        # an id past the embedding is a device-side assert on every rank (groups go to all ranks);
        # one pass over all the group's ids (n completions, each within decode's token limit)
        tokens = np.concatenate([c.tokens for c in comps])
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            return "token_out_of_vocab"
        return "bad_score" if bad_score else "bad_policy_version" if bad_version else "too_long" if too_long else None

    def _heartbeat(self, peer: bytes, msg: Heartbeat):
        weights = self.state.weights  # read once: seq and version from the same broadcast
        return Heartbeat("learner", weights.version, weights.seq)

    def _gauges(self) -> None:
        now = time.monotonic()
        members = self.members()
        # a member missing from last_seen was pruned there, unheard of for the peer horizon: silent
        # too (the horizon is by default the actor timeout, so pruning used to come first and the
        # seat was never freed; bench/soak.py)
        silent = [a for a in members if now - self.last_seen.get(a, -math.inf) > self.actor_timeout_s]
        if silent:
            self.evict(silent, "silent")
        self.metrics.members.set(len(self.members()))
        self.metrics.actors.set(sum(now - t < self.actor_timeout_s for t in self.last_seen.values()))
        buffered, in_flight = self.buffer.sizes()
        self.metrics.buffer.set(buffered)
        self.metrics.leases.set(in_flight)
        # The buffer keeps plain totals (it has no metrics); mirror their growth into the counters.
        for name, counter in (("expired", self.metrics.expired), ("dropped_stale", self.metrics.stale),
                              ("released", self.metrics.released), ("given_up", self.metrics.given_up)):
            total = getattr(self.buffer.stats, name)
            counter.inc(total - self._mirrored[name])
            self._mirrored[name] = total
