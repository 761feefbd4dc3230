"""Replay buffer and lease book of the learner's hub (DESIGN.md section 3).

Holds complete prompt groups until a training step takes them, and decides
how much work actors may lease: only while buffered + in-flight groups stay
under the capacity and the work could still be trained on within
``max_staleness`` policy versions. Every lease has a deadline; an expired
lease (dead actor) or a group dropped for staleness puts its prompts back at
the front of the queue, so over an epoch each prompt is trained on once.
Thread-safe: the hub thread leases and completes, the trainer takes.
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.protocol import Completion

log = logging.getLogger("learner.buffer")

MAX_REFUSALS = 3
"""Groups of one prompt the hub may refuse in an epoch before the prompt is given up for it."""


@dataclass
class Group:
    prompt_id: int
    prompt_tokens: np.ndarray
    completions: list[Completion]
    actor_id: str

    @property
    def version(self) -> int:
        """The oldest policy version among its completions: what staleness is measured from."""
        return min(c.version for c in self.completions)


@dataclass
class Lease:
    actor_id: str
    prompt_ids: set[int]
    deadline: float
    version: int


@dataclass
class BufferStats:
    expired: int = 0
    dropped_stale: int = 0
    released: int = 0
    given_up: int = 0


class ReplayBuffer:
    def __init__(self, num_prompts: int, *, capacity: int, groups_per_step: int, max_staleness: int,
                 lease_timeout_s: float, epochs: int = 0, seed: int = 0, late_wait_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.num_prompts, self.capacity, self.groups_per_step = num_prompts, capacity, groups_per_step
        self.max_staleness, self.lease_timeout_s, self.epochs = max_staleness, lease_timeout_s, epochs
        self.late_wait_s = late_wait_s
        """How long a take() that could return waits for in-flight groups it is the last chance to train."""
        self._late_deadline: tuple[int, float] | None = None
        """(take version, time.monotonic() deadline) of the wait for late groups now running."""
        self.clock = clock
        self.rng = random.Random(seed)
        self.pending: deque[int] = deque()
        self.leases: dict[int, Lease] = {}
        self.groups: deque[Group] = deque()
        self.epoch = 0
        self.stats = BufferStats()
        self._lease_ids = itertools.count(1)
        self.last_take: int | None = None
        """The policy version of the last successful take (None: none yet)."""
        self._cond = threading.Condition()
        self._refusals: dict[int, int] = {}
        """Prompt id -> groups of it refused this epoch (refuse())."""
        self._waiting: list[int] = []
        """The ``k`` of each take() now waiting: complete() wakes them once one could return."""

    # ------------------------------------------------------------ limits
    def limit(self, version: int, policy_version: int) -> int:
        """Buffered + in-flight groups allowed for work generated with ``version`` while the
        learner is at ``policy_version``: capacity, and no more than the learner will have
        trained (``groups_per_step`` a version, oldest first) before that work is more than
        ``max_staleness`` versions old. An actor a version behind gets a step's worth less.
        A step in progress has taken its groups already: the next take is a version later."""
        next_take = policy_version if self.last_take is None else max(policy_version, self.last_take + 1)
        horizon = version + self.max_staleness + 1 - next_take
        return min(self.capacity, horizon * self.groups_per_step)

    def step_skipped(self, version: int) -> None:
        """The step that took at ``version`` left the weights as they were (a non-finite loss):
        the next take is at ``version`` again, not a version later. Without this, leases stay
        sized for a take that will not come: at max_staleness 0 the limit is 0 for good."""
        with self._cond:
            if self.last_take == version:
                self.last_take = version - 1

    @property
    def in_flight(self) -> int:
        return sum(len(lease.prompt_ids) for lease in self.leases.values())

    def _refill(self) -> bool:
        if self.epochs and self.epoch >= self.epochs:
            return False
        ids = list(range(self.num_prompts))
        self.rng.shuffle(ids)
        self.pending.extend(ids)
        self.epoch += 1
        self._refusals.clear()
        return True

    # ------------------------------------------------------------ hub side
    def lease(self, actor_id: str, credits: int, version: int,
              policy_version: int | None = None) -> tuple[int, list[int]]:
        """(lease id, prompt ids) for an actor holding ``version``, the learner being at
        ``policy_version`` (None: the same version); an empty list means: nothing may be
        leased now."""
        with self._cond:
            self._expire_locked()
            learner = version if policy_version is None else policy_version
            room = self.limit(version, learner) - len(self.groups) - self.in_flight
            take = max(0, min(credits, room))
            if take and not self.pending:
                self._refill()
            ids = [self.pending.popleft() for _ in range(min(take, len(self.pending)))]
            if not ids:
                return 0, []
            lease_id = next(self._lease_ids)
            self.leases[lease_id] = Lease(actor_id, set(ids), self.clock() + self.lease_timeout_s, version)
            return lease_id, ids

    def complete(self, lease_id: int, group: Group) -> str:
        """Accept a finished group; returns "" or the reason it was refused."""
        with self._cond:
            lease = self.leases.get(lease_id)
            if lease is None:
                return "unknown_lease"
            if lease.actor_id != group.actor_id:
                return "not_your_lease"
            if group.prompt_id not in lease.prompt_ids:
                return "not_leased"
            lease.prompt_ids.discard(group.prompt_id)
            if not lease.prompt_ids:
                del self.leases[lease_id]
            self.groups.append(group)
            # wake a waiting take() when it could return, not at every group: each wake-up costs
            # the hub thread a hand-over of the GIL (bench/transport.py)
            if self._waiting and (len(self.groups) >= min(self._waiting) or self._last_epoch_out_locked()):
                self._cond.notify_all()
            return ""

    def refuse(self, lease_id: int, actor_id: str, prompt_id: int) -> None:
        """The hub refused ``actor_id``'s group for ``prompt_id`` (a value out of range, a
        mismatch): the prompt goes back to the front of the queue at once rather than at the
        lease's deadline. One refused ``MAX_REFUSALS`` times in an epoch (a reference no
        completion can score within bounds, an engine that always reports a bad value) is given
        up for the epoch, so that the epoch can end. A group for a lease that is not the
        actor's, or a prompt it was not leased, changes nothing."""
        with self._cond:
            lease = self.leases.get(lease_id)
            if lease is None or lease.actor_id != actor_id or prompt_id not in lease.prompt_ids:
                return
            lease.prompt_ids.discard(prompt_id)
            if not lease.prompt_ids:
                del self.leases[lease_id]
            self._refusals[prompt_id] = self._refusals.get(prompt_id, 0) + 1
            if self._refusals[prompt_id] < MAX_REFUSALS:
                self.pending.appendleft(prompt_id)
                self.stats.released += 1
                return
            self.stats.given_up += 1
            log.warning("prompt %d given up for epoch %d: its group was refused %d times", prompt_id, self.epoch,
                        MAX_REFUSALS)
            if self._waiting and self._last_epoch_out_locked():
                self._cond.notify_all()  # it may have been the last one out

    def release(self, actor_id: str, lease_ids: list[int] | None = None) -> int:
        """Re-queue, at once, the prompts of ``actor_id``'s leases (all of them when
        ``lease_ids`` is None); returns how many prompts went back."""
        with self._cond:
            n = self._requeue_locked([lid for lid, lease in self.leases.items() if lease.actor_id == actor_id
                                      and (lease_ids is None or lid in lease_ids)])
            self.stats.released += n
            return n

    def _expire_locked(self) -> int:
        now = self.clock()
        n = self._requeue_locked([lid for lid, lease in self.leases.items() if lease.deadline <= now])
        self.stats.expired += n
        return n

    def _requeue_locked(self, lease_ids: list[int]) -> int:
        """End these leases; their prompts go to the front of the queue. Returns how many."""
        n = 0
        for lid in lease_ids:
            ids = self.leases.pop(lid).prompt_ids
            self.pending.extendleft(sorted(ids, reverse=True))
            n += len(ids)
        return n

    # ------------------------------------------------------------ trainer side
    def take(self, k: int, version: int, timeout_s: float | None = None) -> list[Group] | None:
        """``k`` groups no staler than ``max_staleness``, oldest version first, blocking until
        there are enough. Stale groups met on the way are dropped and their prompts re-queued.
        At the end of the last epoch the remaining groups are returned even if fewer than
        ``k``: the last partial batch is trained, not waited for. None when ``timeout_s``
        passes first.

        Groups arrive in any order: a slow actor's older group can still be in flight when a
        fast actor's newer ones are here. When this take is the last that may train such a
        group, it waits up to ``late_wait_s`` for it rather than train the newer ones and drop
        the older (a whole generation lost). The wait persists across calls that time out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                self._drop_stale(version)
                if len(self.groups) >= k or (self.groups and self._last_epoch_out_locked()):
                    if not self._waiting_for_late_locked(k, version):
                        self.last_take, self._late_deadline = version, None
                        return self._pop_oldest_locked(k)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._waiting.append(k)
                try:
                    self._cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))
                finally:
                    self._waiting.remove(k)
                self._expire_locked()

    def _waiting_for_late_locked(self, k: int, version: int) -> bool:
        """True while groups leased at the oldest trainable version (``version - max_staleness``)
        are in flight, fewer than ``k`` such groups are buffered, and the wait has time left."""
        last_chance = version - self.max_staleness
        if self.late_wait_s <= 0:
            return False
        # (at max_staleness 0 every buffered group is at its last chance: a full batch returns here,
        # and the last partial one has no lease in flight)
        if sum(g.version <= last_chance for g in self.groups) >= k:
            return False
        if not any(lease.version == last_chance for lease in self.leases.values()):
            return False
        now = time.monotonic()
        if self._late_deadline is None or self._late_deadline[0] != version:
            self._late_deadline = (version, now + self.late_wait_s)
        return now < self._late_deadline[1]

    def _pop_oldest_locked(self, k: int) -> list[Group]:
        """The ``k`` groups of the oldest versions (arrival order among equals); the rest stay."""
        chosen = sorted(range(len(self.groups)), key=lambda i: self.groups[i].version)[:k]  # stable sort
        out, taken = [self.groups[i] for i in chosen], set(chosen)
        self.groups = deque(g for i, g in enumerate(self.groups) if i not in taken)
        return out

    def _drop_stale(self, version: int) -> None:
        keep = deque(g for g in self.groups if version - g.version <= self.max_staleness)
        for g in self.groups:
            if version - g.version > self.max_staleness:
                self.pending.appendleft(g.prompt_id)
                self.stats.dropped_stale += 1
        self.groups = keep

    def _last_epoch_out_locked(self) -> bool:
        """Every prompt of the last epoch is handed out and none is in flight."""
        return bool(self.epochs) and self.epoch >= self.epochs and not (self.pending or self.leases)

    def exhausted(self) -> bool:
        """All epochs handed out, nothing in flight or buffered."""
        with self._cond:
            return self._last_epoch_out_locked() and not self.groups

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """What a checkpoint keeps: every prompt not yet trained on (buffered and in-flight
        groups go back in front of the queue: a restarted learner trains them anew), the
        epoch and the shuffling RNG, so the run goes on with the same prompt order."""
        with self._cond:
            unfinished = [g.prompt_id for g in self.groups] + sorted(
                i for lease in self.leases.values() for i in lease.prompt_ids)
            return {"pending": unfinished + list(self.pending), "epoch": self.epoch,
                    "rng": _rng_to_json(self.rng.getstate())}

    def restore(self, state: dict) -> None:
        with self._cond:
            self.pending = deque(state["pending"])
            self.epoch = state["epoch"]
            self.rng.setstate(_rng_from_json(state["rng"]))
            self.leases.clear()
            self.groups.clear()

    def sizes(self) -> tuple[int, int]:
        with self._cond:
            return len(self.groups), self.in_flight


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
