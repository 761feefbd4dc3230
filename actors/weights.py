"""The actor's side of the elastic weight broadcast (common/weight_sync.py).

Between generation batches the actor asks ``WeightFollower.sync()`` to bring
its engine up to date: it reads the rendezvous store the learner keeps, joins
the newest group generation that names it (leaving the old one), and takes
part in every broadcast made on it, confirming each, so the learner can tell
a slow or dead member from a live one.

``held`` is the (broadcast seq, policy version) pair the engine's weights
are, replaced as one immutable value. A receive that fails part-way leaves
the engine with a mix of weights: ``held.version`` becomes -1 and the hub
leases nothing to this actor until a later generation's broadcast has been
received whole.
"""
from __future__ import annotations

import logging
import time

from torch.distributed import DistNetworkError

from actors.engine import Engine
from common.metrics import WeightSyncMetrics
from common.protocol import WeightRef
from common.weight_sync import Rendezvous, WeightGroupSpec, open_store

log = logging.getLogger("actors")

class StoreLost(Exception):
    """The learner's rendezvous store stopped answering; the message is one line."""


INVALID = -1
"""``held.version`` of an engine whose last receive failed part-way."""


class WeightFollower:
    def __init__(self, engine: Engine, actor_id: str, metrics: WeightSyncMetrics, held: WeightRef):
        self.engine, self.actor_id, self.metrics = engine, actor_id, metrics
        self.held = held
        self.rdv: Rendezvous | None = None
        self.group: dict | None = None  # host, port, backend, timeout_s
        self.manifest: list = []
        self.generation: int | None = None  # the generation joined
        self.rank = 0
        self.received = 0  # broadcasts taken on that generation
        self.skip: int | None = None  # a generation that failed here: wait for a newer one

    def attach(self, weight_group: dict | None, manifest: list, learner_version: int) -> None:
        """A new learner session (Welcome): its store, nothing joined yet. Broadcast sequence
        numbers restart with a learner; the weights (and their version) stay what they are,
        unless they are ahead of ``learner_version``: a learner restarted from an earlier step
        (or from scratch) never made them, so they are no version of its policy."""
        self.leave()
        self.group, self.manifest, self.skip = weight_group, manifest, None
        version = self.held.version if self.held.version <= learner_version else INVALID
        self.held = WeightRef(0, version)
        self.rdv = None
        if weight_group is not None:
            store = open_store(weight_group["host"], weight_group["port"], weight_group["timeout_s"], master=False)
            self.rdv = Rendezvous(store)

    def leave(self) -> None:
        if self.generation is not None:
            self.engine.leave_weight_group()
            self.generation = None

    def sync(self) -> None:
        """Join the newest generation naming this actor and take every broadcast made on it.
        Raises StoreLost when the learner's rendezvous store stops answering (it died)."""
        if self.rdv is None:
            return
        try:
            self._sync()
        except DistNetworkError as e:  # the store lives in the learner: it is gone with it
            raise StoreLost(f"the learner's rendezvous store at {self.group['host']}:{self.group['port']} "
                            f"is unreachable: {e}") from e

    def _sync(self) -> None:
        g = self.rdv.current()
        if g is None or g == self.skip:
            return
        if g != self.generation:
            self.leave()
            members = self.rdv.members(g)
            if self.actor_id not in members:
                return  # a later generation will name it (the hub has its hello)
            self.rank, self.received = members.index(self.actor_id) + 1, 0
            spec = WeightGroupSpec(self.group["host"], self.group["port"], len(members) + 1, self.rank,
                                   self.group["backend"], self.group["timeout_s"], g)
            try:
                self.engine.join_weight_group(spec, self.manifest)
            except RuntimeError as e:  # the group failed to form (a member missing): wait for the next
                log.warning("%s: joining weight group generation %d failed: %s", self.actor_id, g, e)
                self.skip = g
                return
            self.generation = g
        while self.generation == g and self.received < self.rdv.count(g):
            self._receive(g, self.received + 1)

    def _receive(self, g: int, k: int) -> None:
        seq, version = self.rdv.broadcast_info(g, k)
        t0 = time.perf_counter()
        try:
            nbytes = self.engine.receive_weights()
        except RuntimeError as e:  # the learner gave up on this broadcast, or a peer died
            log.warning("%s: receiving version %d failed: %s; waiting for a new group", self.actor_id, version, e)
            self.rdv.confirm(g, k, self.rank, ok=False)  # alive: the learner re-forms the group, keeps us
            self.held = WeightRef(self.held.seq, INVALID)
            self.leave()
            self.skip = g
            return
        self.received = k
        self.rdv.confirm(g, k, self.rank)
        self.held = WeightRef(seq, version)
        seconds = time.perf_counter() - t0
        self.metrics.seconds.observe(seconds)
        self.metrics.bytes.inc(nbytes)
        self.metrics.count.inc()
        log.info("%s: weights of policy version %d received (%.2fs)", self.actor_id, version, seconds)
