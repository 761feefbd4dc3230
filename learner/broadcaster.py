"""Weight broadcaster of learner rank 0: owns the PUB socket, the broadcast's
rendezvous store and the broadcast group (common/weight_sync.py), and sends
each new policy to the actors in a background thread so that training does
not wait for actors to reach a generation boundary.

Membership is elastic. The group is formed anew (a new generation in the
rendezvous store) whenever the hub's membership changes: an actor joined,
left, was evicted or started a new session. A new generation first gets the
newest snapshot, the initial weights included (what its members hold is
unknown: an actor that outlived a learner restarted from an earlier step holds
weights this learner never made), so every member holds the current weights
before the hub leases it work. A member that does not join a
generation, or does not confirm a broadcast, within the group's timeout is
evicted and the rest go on; nothing waits on a dead peer longer than that.

Snapshots coalesce: only the newest pending one is sent. The broadcaster
keeps the newest snapshot for later generations. An unexpected failure of
the thread itself is re-raised in the trainer by ``check()``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import torch
import zmq

from common import transport
from common.keys import load_server
from common.metrics import WeightSyncMetrics
from common.protocol import Error, VersionAnnounce, WeightRef
from common.weight_sync import MembersMissing, Rendezvous, WeightGroup, WeightGroupSpec, open_store
from learner.hub import RunState

log = logging.getLogger("learner.broadcast")


class Broadcaster(threading.Thread):
    def __init__(self, *, pub_bind: str, advertise_host: str, spec: WeightGroupSpec | None, device: torch.device,
                 state: RunState, metrics: WeightSyncMetrics, curve_dir: str = "",
                 membership: Callable[[], tuple[int, tuple[str, ...]]] = lambda: (0, ()),
                 evict: Callable[[list[str], str], None] = lambda ids, reason: None):
        """``spec``: where the rendezvous store listens (rank 0's fields); None: no actor takes
        weights, versions are only announced. ``membership`` / ``evict``: the hub's seats."""
        super().__init__(name="broadcaster", daemon=True)
        self.spec, self.state, self.metrics = spec, state, metrics
        self.membership, self.evict = membership, evict
        self.ctx = zmq.Context()
        keys = load_server(curve_dir) if curve_dir else None
        # ZAP is per context and must answer before the first subscriber connects
        self.auth = transport.start_authenticator(self.ctx, keys) if keys is not None else None
        self.pub = transport.publisher(self.ctx, pub_bind, curve=keys)
        state.pub_endpoint = transport.bound_endpoint(self.pub, advertise_host)
        self.store = open_store(spec.host, spec.port, spec.timeout_s, master=True) if spec is not None else None
        self.rdv = Rendezvous(self.store) if self.store is not None else None
        self._cond = threading.Condition()
        self.device = device
        """The trainer's device: snapshots live there and an NCCL group sends from it."""
        self._pending: tuple[int, list, torch.cuda.Event | None] | None = None
        self._latest: tuple[int, list, torch.cuda.Event | None] | None = None
        """The newest snapshot, kept for groups formed later (newcomers, restarted actors)."""
        self._stopping = False
        self.error: BaseException | None = None
        self.last_seconds = 0.0
        self.generation = 0
        self._group: WeightGroup | None = None
        self._group_members: tuple[str, ...] = ()
        self._group_epoch = 0  # the hub's membership epoch the current generation was formed for
        self._sent_on_group = 0  # broadcasts made on the current generation
        self._group_version = -1  # policy version the current generation's members hold (-1: unknown)

    def submit(self, version: int, named: list[tuple[str, torch.Tensor]], ready: "torch.cuda.Event | None") -> None:
        """Queue ``named`` (already a snapshot the trainer will not modify) for broadcast."""
        with self._cond:
            self._pending = (version, named, ready)
            self._cond.notify_all()

    def run(self) -> None:
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the current device is per thread: not device 0
            while True:
                with self._cond:
                    if self._pending is None and not self._stopping:
                        self._cond.wait(timeout=0.5)  # also wakes to notice membership changes
                    pending, self._pending = self._pending, None
                    stopping = self._stopping
                if pending is not None:
                    self._latest = pending
                    if self.rdv is None:  # no actor takes weights: only announce the version
                        self._broadcast(None, pending[0], [], None)
                if self.rdv is not None:
                    self._serve_members()
                if stopping and self._pending is None:
                    break
            transport.send(self.pub, Error("shutdown", "the run is over"))
            self._close_group()
        except BaseException as e:  # re-raised in the trainer by check()
            self.error = e
            raise

    # ------------------------------------------------------------ membership
    def _serve_members(self) -> None:
        """Re-form the group if membership changed, then bring its members to the newest weights."""
        epoch, members = self.membership()  # one value: the ids and the change they came with
        if epoch != self._group_epoch:
            self._group_epoch = epoch
            self._form(members)
        if self._group is None or self._latest is None or self._latest[0] == self._group_version:
            return
        version, named, ready = self._latest
        k = self._sent_on_group + 1
        wait_s, broken = self.spec.timeout_s, False
        try:
            self._broadcast(self._group, version, named, ready, generation_k=k)
        except RuntimeError as e:  # a member died mid-broadcast (gloo/NCCL error or timeout)
            log.warning("broadcast of version %d failed: %s", version, e)
            # Abort our end first: over gloo, members still blocked receiving from us then fail
            # at once and report themselves alive. NCCL's peers do not see an aborted end: they
            # fail at their own timeout, and must be waited for that long or be evicted alive.
            backend = self._group.backend
            self._close_group()
            wait_s, broken = (min(wait_s, 10.0) if backend == "gloo" else wait_s + 10.0), True
        self._sent_on_group = k
        n = len(self._group_members) + 1
        silent = self.rdv.missing_done(self.generation, k, n, wait_s=wait_s)
        # One dead member breaks the collective for all: the living say so and stay members;
        # only the silent are evicted. Either way the group is formed anew.
        broken = broken or any(self.rdv.failed_here(self.generation, k, r) for r in range(1, n)
                               if r not in silent)
        if silent or broken:
            self._drop([self._group_members[r - 1] for r in silent], "broadcast")
        else:
            self._group_version = version

    def _form(self, members: tuple[str, ...]) -> None:
        self._close_group()
        self.generation += 1
        self.rdv.publish_generation(self.generation, list(members))
        self._group_members, self._sent_on_group = members, 0
        # What members hold is unknown: a fresh actor holds the initial weights, one that outlived
        # a learner restarted from an earlier step (or from scratch) holds weights of versions
        # this learner has not made. Every new generation gets the current weights first.
        self._group_version = -1
        self.metrics.generations.inc()
        if not members:
            return
        spec = WeightGroupSpec(self.spec.host, self.spec.port, len(members) + 1, 0, self.spec.backend,
                               self.spec.timeout_s, self.generation)
        log.info("forming weight group generation %d: %d member(s)", self.generation, len(members))
        try:
            self._group = WeightGroup(spec, device=self.device, store=self.store)
        except MembersMissing as e:
            self._drop([members[r - 1] for r in e.ranks], "join_timeout")
            return
        except RuntimeError as e:  # the group could not connect: nobody can be blamed, all rejoin
            log.warning("weight group generation %d failed to form: %s", self.generation, e)
            self._drop(list(members), "join_failed")
            return
        log.info("weight group generation %d formed (%s, %d members)", self.generation, self._group.backend,
                 len(members) + 1)

    def _drop(self, actor_ids: list[str], reason: str) -> None:
        """Evict members that failed the group; the next pass re-forms it without them."""
        self.evict(actor_ids, reason)
        self._close_group()
        self._group_epoch = -1  # forces a new generation with whoever is left

    def _close_group(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    # ------------------------------------------------------------ one broadcast
    def _broadcast(self, group: WeightGroup | None, version: int, named: list, ready,
                   generation_k: int = 0) -> None:
        if group is None:  # no actor can take weights: only announce the version
            transport.send(self.pub, VersionAnnounce(version, self.state.weights.seq))
            return
        seq = self.state.weights.seq + 1  # this thread is the only writer of state.weights
        if self.rdv is not None:
            self.rdv.publish_broadcast(self.generation, generation_k, seq, version)
        transport.send(self.pub, VersionAnnounce(version, seq))
        # Hub replies carry the pair too, so an actor that missed the PUB message still joins.
        # One attribute store: the hub thread sees the old pair or the new one, never a mix.
        self.state.weights = WeightRef(seq, version)
        t0 = time.perf_counter()
        nbytes = group.broadcast(named, ready)  # returns once the transfer is done
        self.last_seconds = time.perf_counter() - t0
        self.metrics.seconds.observe(self.last_seconds)
        self.metrics.bytes.inc(nbytes)
        self.metrics.count.inc()
        log.info("broadcast version %d (seq %d): %.1f MB in %.2fs", version, seq, nbytes / 1e6, self.last_seconds)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"weight broadcast failed: {self.error!r}") from self.error

    def finish(self, timeout_s: float) -> None:
        """Send what is pending, announce shutdown, stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout=timeout_s)
        self.check()
        if self.is_alive():
            raise RuntimeError(f"weight broadcast did not finish within {timeout_s:.0f} s")
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=1000)
