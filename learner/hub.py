"""The learner's ZeroMQ side (rank 0): one ROUTER socket carries the whole
conversation with actors (hello, work leasing, trajectory ingest, acks,
heartbeats) and feeds the replay buffer. Runs in its own thread; a crash in it
is re-raised in the trainer by ``check()``.

Malformed or inconsistent messages are dropped and counted in
``flowrl_hub_rejected_messages_total{reason}``, logged once per peer per
minute; the peer and everyone else go on.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import zmq

from common import transport
from common.metrics import HubMetrics
from common.protocol import (Ack, Error, Heartbeat, Hello, ProtocolError, Prompt, Sampling, Trajectories,
                             Welcome, Work, WorkRequest, decode)
from learner.buffer import Group, ReplayBuffer

log = logging.getLogger("learner.hub")

ACTOR_TIMEOUT_S = 120.0  # an actor unheard of for this long no longer counts as connected


@dataclass
class RunState:
    """What the trainer and broadcaster publish for the hub to hand out."""

    policy_version: int = 0
    """The learner's current version (optimizer steps taken)."""
    weight_seq: int = 0
    """Broadcasts started so far."""
    weight_version: int = 0
    """Policy version carried by broadcast ``weight_seq``: what an actor holds once caught up."""
    pub_endpoint: str = ""
    stopping: bool = False


class Hub(threading.Thread):
    def __init__(self, *, bind: str, buffer: ReplayBuffer, prompts: list[np.ndarray], kinds: list[str],
                 references: list[str], sampling: Sampling, state: RunState, metrics: HubMetrics,
                 weight_group: dict | None, manifest: list, group_slots: int, lease_timeout_s: float):
        super().__init__(name="hub", daemon=True)
        self.buffer, self.prompts, self.kinds, self.references = buffer, prompts, kinds, references
        self.sampling, self.state, self.metrics = sampling, state, metrics
        self.weight_group, self.manifest, self.group_slots = weight_group, manifest, group_slots
        self.lease_timeout_s = lease_timeout_s
        self.run_id = uuid.uuid4().hex[:12]
        self.ctx = zmq.Context()
        self.sock = transport.router(self.ctx, bind)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.slots: dict[str, int] = {}  # actor id -> rank in the weight group
        self.last_seen: dict[str, float] = {}
        self._logged: dict[tuple[bytes, str], float] = {}
        self._mirrored = {"expired": 0, "dropped_stale": 0}
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    # ------------------------------------------------------------ thread
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.sock.poll(100):
                    frames = transport.recv_frames(self.sock)
                    self._handle(frames[0].bytes, frames[1:])
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
        self.ctx.destroy(linger=0)

    # ------------------------------------------------------------ dispatch
    def _reject(self, peer: bytes, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged.get((peer, reason), -1e9) > 60:
            self._logged[(peer, reason)] = now
            log.warning("dropped message from %r: %s: %s", peer[:40], reason, detail)

    def _handle(self, peer: bytes, frames: list) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as e:
            self._reject(peer, e.reason, e.detail)
            return
        if self.state.stopping:
            transport.send(self.sock, Error("shutdown", "the run is over"), peer)
            return
        handler = {Hello: self._hello, WorkRequest: self._work, Trajectories: self._trajectories,
                   Heartbeat: self._heartbeat}.get(type(msg))
        if handler is None:
            self._reject(peer, "unexpected_type", type(msg).__name__)
            return
        if not isinstance(msg, Heartbeat) or msg.actor_id != "probe":
            self.last_seen[msg.actor_id] = time.monotonic()
        reply = handler(peer, msg)
        if reply is not None:
            transport.send(self.sock, reply, peer)

    def _hello(self, peer: bytes, msg: Hello):
        group, manifest = None, []
        if self.weight_group is not None:
            rank = self.slots.get(msg.actor_id)
            if rank is None and len(self.slots) < self.group_slots:
                rank = self.slots[msg.actor_id] = len(self.slots) + 1
            if rank is not None:
                group, manifest = dict(self.weight_group, rank=rank), self.manifest
        log.info("actor %s (%s, pid %d) joined; weight rank %s", msg.actor_id, msg.engine, msg.pid,
                 group["rank"] if group else None)
        return Welcome(self.run_id, self.state.weight_version, self.state.weight_seq, self.state.pub_endpoint,
                       group, manifest)

    def _work(self, peer: bytes, msg: WorkRequest):
        if msg.credits < 0:
            self._reject(peer, "bad_field", "negative credits")
            return None
        lease_id, ids = self.buffer.lease(msg.actor_id, msg.credits, self.state.policy_version)
        prompts = [Prompt(i, self.kinds[i], self.references[i], self.prompts[i]) for i in ids]
        return Work(lease_id, self.state.weight_version, self.state.weight_seq, self.lease_timeout_s,
                    self.sampling, prompts, retry_after_s=0.0 if ids else 0.2)

    def _trajectories(self, peer: bytes, msg: Trajectories):
        reason = self._inconsistent(msg)
        if reason is None:
            group = Group(msg.prompt_id, msg.prompt_tokens, msg.completions, msg.actor_id)
            reason = self.buffer.complete(msg.lease_id, group) or None
        if reason is not None:
            self._reject(peer, reason, f"lease {msg.lease_id} prompt {msg.prompt_id}")
            return Ack(msg.lease_id, msg.prompt_id, False, reason)
        self.metrics.received.inc()
        return Ack(msg.lease_id, msg.prompt_id, True, "")

    def _inconsistent(self, msg: Trajectories) -> str | None:
        if not 0 <= msg.prompt_id < len(self.prompts):
            return "unknown_prompt"
        if not np.array_equal(msg.prompt_tokens, self.prompts[msg.prompt_id]):
            return "prompt_mismatch"
        if len(msg.completions) != self.sampling.n:
            return "group_size"
        if any(c.version > self.state.policy_version or c.version < 0 for c in msg.completions):
            return "bad_version"
        if any(len(c.tokens) > self.sampling.max_tokens for c in msg.completions):
            return "too_long"
        return None

    def _heartbeat(self, peer: bytes, msg: Heartbeat):
        return Heartbeat("learner", self.state.weight_version, self.state.weight_seq)

    def _gauges(self) -> None:
        now = time.monotonic()
        self.metrics.actors.set(sum(now - t < ACTOR_TIMEOUT_S for t in self.last_seen.values()))
        buffered, in_flight = self.buffer.sizes()
        self.metrics.buffer.set(buffered)
        self.metrics.leases.set(in_flight)
        # The buffer keeps plain totals (it has no metrics); mirror their growth into the counters.
        for name, counter in (("expired", self.metrics.expired), ("dropped_stale", self.metrics.stale)):
            total = getattr(self.buffer.stats, name)
            counter.inc(total - self._mirrored[name])
            self._mirrored[name] = total
