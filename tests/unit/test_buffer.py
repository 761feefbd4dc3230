"""Replay buffer: bounded, honours staleness, re-queues expired leases and stale groups."""
import numpy as np

from common.protocol import Completion
from learner.buffer import Group, ReplayBuffer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _group(pid, version, n=2, actor="a"):
    comps = [Completion(np.array([1], np.int32), np.array([-0.5], np.float32), "stop", 1.0, version)
             for _ in range(n)]
    return Group(pid, np.array([pid], np.int32), comps, actor)


def _buffer(clock=None, **kw):
    args = dict(capacity=100, groups_per_step=2, max_staleness=1, lease_timeout_s=10.0, clock=clock or Clock())
    args.update(kw)
    return ReplayBuffer(20, **args)


def test_leasing_is_bounded_by_capacity_and_staleness():
    b = _buffer(capacity=5, max_staleness=3)  # staleness allows 8, capacity 5
    _, ids = b.lease("a", 100, 0)
    assert len(ids) == 5
    assert b.lease("a", 1, 0) == (0, [])
    b2 = _buffer(capacity=100, max_staleness=1)  # (1 + 1) * 2 = 4 groups trainable in time
    assert len(b2.lease("a", 100, 0)[1]) == 4


def test_an_actor_a_version_behind_is_leased_only_what_it_can_deliver_in_time():
    # max_staleness 2, 2 groups a step, learner at version 5: work of version 5 is trainable
    # until the learner has taken 3 more steps (6 groups), of version 4 for 2 (4 groups),
    # of version 3 for 1 (2 groups); version 2 is too old for any.
    for version, expected in ((5, 6), (4, 4), (3, 2), (2, 0)):
        b = _buffer(max_staleness=2)
        assert len(b.lease("a", 100, version, policy_version=5)[1]) == expected, version
    b = _buffer(max_staleness=2)
    assert len(b.lease("fresh", 3, 5, policy_version=5)[1]) == 3  # already in line ahead of the next
    assert len(b.lease("behind", 100, 4, policy_version=5)[1]) == 1  # 4 - 3 ahead of it
    # trained in time: each group it delivers is at most max_staleness old when taken
    b = _buffer(max_staleness=0)
    lid, ids = b.lease("a", 100, 5, policy_version=5)
    for pid in ids:
        b.complete(lid, _group(pid, 5))
    assert len(b.take(2, 5)) == 2 and b.stats.dropped_stale == 0
    # while that step trains the learner is still at 5, but its next take is at 6: work of
    # version 5 fits one step (max_staleness 1), not two
    b = _buffer(max_staleness=1)
    lid, ids = b.lease("a", 2, 5, policy_version=5)
    for pid in ids:
        b.complete(lid, _group(pid, 5))
    assert len(b.take(2, 5)) == 2
    assert len(b.lease("a", 100, 5, policy_version=5)[1]) == 2


def test_a_skipped_step_does_not_shrink_the_leases():
    """A step that took at version 5 and was skipped (non-finite loss) leaves the learner at 5,
    and its next take is at 5 again: leases are sized for that take, not one a version later
    (at max_staleness 0 that was a limit of 0 for good: the learner waited for groups forever)."""
    b = _buffer(max_staleness=0)
    lid, ids = b.lease("a", 2, 5, policy_version=5)
    for pid in ids:
        b.complete(lid, _group(pid, 5))
    assert len(b.take(2, 5)) == 2
    assert b.lease("a", 100, 5, policy_version=5) == (0, [])  # that step is training: nothing fits
    b.step_skipped(5)
    assert len(b.lease("a", 100, 5, policy_version=5)[1]) == 2


def test_completed_groups_count_against_the_bound_until_taken():
    b = _buffer(capacity=3, max_staleness=5)
    lid, ids = b.lease("a", 3, 0)
    for pid in ids:
        assert b.complete(lid, _group(pid, 0)) == ""
    assert b.lease("a", 1, 0)[1] == []
    assert len(b.take(2, 0)) == 2
    assert len(b.lease("a", 5, 0)[1]) == 2


def test_complete_refuses_unknown_or_unleased():
    b = _buffer()
    lid, ids = b.lease("a", 2, 0)
    assert b.complete(999, _group(ids[0], 0)) == "unknown_lease"
    other = next(i for i in range(20) if i not in ids)
    assert b.complete(lid, _group(other, 0)) == "not_leased"
    assert b.complete(lid, _group(ids[0], 0)) == ""
    assert b.complete(lid, _group(ids[0], 0)) == "not_leased"  # no duplicates


def test_expired_lease_requeues_prompts_first():
    clock = Clock()
    b = _buffer(clock)
    lid, ids = b.lease("dead", 2, 0)
    clock.t = 11.0
    lid2, ids2 = b.lease("alive", 2, 0)
    assert ids2 == ids  # the dead actor's prompts come back before new ones
    assert b.stats.expired == 2
    assert b.complete(lid, _group(ids[0], 0, actor="dead")) == "unknown_lease"  # the late result is refused
    assert b.complete(lid2, _group(ids[0], 0)) == "not_your_lease"  # another actor's lease
    assert b.complete(lid2, _group(ids[0], 0, actor="alive")) == ""


def test_take_drops_stale_groups_and_requeues_their_prompts():
    b = _buffer(max_staleness=1, capacity=100)
    lid, ids = b.lease("a", 4, 0)
    b.complete(lid, _group(ids[0], 0))
    b.complete(lid, _group(ids[1], 2))
    b.complete(lid, _group(ids[2], 2))
    got = b.take(2, version=2)
    assert [g.prompt_id for g in got] == [ids[1], ids[2]]
    assert b.stats.dropped_stale == 1
    assert b.pending[0] == ids[0]


def test_take_times_out_when_empty():
    b = _buffer()
    assert b.take(1, 0, timeout_s=0.05) is None


def test_one_epoch_trains_each_prompt_once_despite_failures():
    clock = Clock()
    b = ReplayBuffer(6, capacity=100, groups_per_step=1, max_staleness=100, lease_timeout_s=5.0, epochs=1,
                     clock=clock)
    trained = []
    lid, ids = b.lease("dies", 2, 0)
    clock.t = 6.0  # that actor died
    while not b.exhausted():
        lid, ids = b.lease("ok", 3, 0)
        for pid in ids:
            assert b.complete(lid, _group(pid, 0, actor="ok")) == ""
        while (g := b.take(1, 0, timeout_s=0)) is not None:
            trained += [x.prompt_id for x in g]
    assert sorted(trained) == list(range(6))


def test_last_partial_batch_is_returned_not_waited_for():
    b = ReplayBuffer(5, capacity=100, groups_per_step=2, max_staleness=100, lease_timeout_s=5.0, epochs=1)
    lid, ids = b.lease("a", 5, 0)
    for pid in ids:
        b.complete(lid, _group(pid, 0))
    sizes = []
    while not b.exhausted():
        sizes.append(len(b.take(2, 0, timeout_s=1)))
    assert sizes == [2, 2, 1]


def test_a_refused_group_requeues_its_prompt_and_three_refusals_give_it_up():
    """A prompt whose group the hub refused goes back to the front of the queue at once; one
    refused three times in an epoch (no completion of it can ever be accepted) is given up for
    the epoch, which can then end. Another actor's lease is left alone."""
    b = ReplayBuffer(3, capacity=100, groups_per_step=1, max_staleness=100, lease_timeout_s=5.0, epochs=1)
    lid, ids = b.lease("a", 3, 0)
    b.refuse(lid, "b", ids[0])  # not b's lease: nothing changes
    assert b.sizes() == (0, 3) and not b.pending
    b.refuse(lid, "a", ids[0])
    assert list(b.pending) == [ids[0]] and b.sizes() == (0, 2) and b.stats.released == 1
    for pid in ids[1:]:
        assert b.complete(lid, _group(pid, 0)) == ""
    assert b.take(2, 0, timeout_s=0) is not None
    for attempt in (2, 3):
        lid, again = b.lease("a", 3, 0)
        assert again == [ids[0]]
        b.refuse(lid, "a", ids[0])
    assert b.stats.given_up == 1 and not b.pending and b.sizes() == (0, 0)
    assert b.exhausted()  # the epoch ends without it


def test_release_requeues_at_once_and_only_that_actors_leases():
    b = _buffer()
    l1, ids1 = b.lease("a", 2, 0)
    l2, ids2 = b.lease("b", 2, 0)
    assert b.release("a") == 2 and b.stats.released == 2
    assert b.complete(l1, _group(ids1[0], 0)) == "unknown_lease"
    assert b.complete(l2, _group(ids2[0], 0, actor="b")) == ""
    assert b.lease("c", 2, 0)[1] == ids1  # handed back prompts come first


def test_state_restores_every_untrained_prompt_in_order():
    b = ReplayBuffer(8, capacity=100, groups_per_step=2, max_staleness=100, lease_timeout_s=5.0, epochs=2, seed=3)
    lid, ids = b.lease("a", 3, 0)
    b.complete(lid, _group(ids[0], 0))  # buffered, not trained: comes back too
    state = b.state()
    assert sorted(state["pending"]) == list(range(8)) and state["epoch"] == 1
    again = ReplayBuffer(8, capacity=100, groups_per_step=2, max_staleness=100, lease_timeout_s=5.0, epochs=2,
                         seed=99)
    again.restore(state)
    b.restore(state)
    # the same order from here on, the next epoch's shuffle included (the RNG state travels)
    assert [again.lease("x", 1, 0)[1][0] for _ in range(16)] == [b.lease("x", 1, 0)[1][0] for _ in range(16)]


def _fill(b, actor, version, n, policy_version):
    lid, ids = b.lease(actor, n, version, policy_version=policy_version)
    assert len(ids) == n
    return lid, ids


def test_take_trains_the_oldest_versions_first():
    b = _buffer(max_staleness=2)
    new_lid, new = _fill(b, "fast", 3, 2, 3)
    old_lid, old = _fill(b, "slow", 2, 2, 3)
    for pid in new:
        b.complete(new_lid, _group(pid, 3, actor="fast"))
    for pid in old:
        b.complete(old_lid, _group(pid, 2, actor="slow"))
    assert [g.version for g in b.take(2, 3)] == [2, 2]
    assert [g.version for g in b.take(2, 4)] == [3, 3] and b.stats.dropped_stale == 0


def test_a_take_waits_for_an_older_group_it_is_the_last_chance_to_train():
    import threading
    import time

    # the fast actor's version-2 groups are here; the slow actor's version-1 groups are in
    # flight, and the take at version 2 is the last that may train them (max_staleness 1)
    b = _buffer(max_staleness=1, late_wait_s=5.0)
    slow_lid, slow = _fill(b, "slow", 1, 2, 1)
    fast_lid, fast = _fill(b, "fast", 2, 2, 2)
    for pid in fast:
        b.complete(fast_lid, _group(pid, 2, actor="fast"))
    late = threading.Timer(0.3, lambda: [b.complete(slow_lid, _group(pid, 1, actor="slow")) for pid in slow])
    t0 = time.monotonic()
    late.start()
    got = b.take(2, 2, timeout_s=10.0)
    assert 0.25 < time.monotonic() - t0 < 4.0
    assert [g.actor_id for g in got] == ["slow", "slow"]
    assert [g.actor_id for g in b.take(2, 3)] == ["fast", "fast"] and b.stats.dropped_stale == 0


def test_the_wait_for_late_groups_is_bounded_and_survives_timed_out_calls():
    import time

    b = _buffer(max_staleness=1, late_wait_s=0.6)
    _fill(b, "slow", 1, 2, 1)  # never delivered
    fast_lid, fast = _fill(b, "fast", 2, 2, 2)
    for pid in fast:
        b.complete(fast_lid, _group(pid, 2, actor="fast"))
    t0 = time.monotonic()
    assert b.take(2, 2, timeout_s=0.2) is None  # still waiting for the slow actor's groups
    got = b.take(2, 2, timeout_s=5.0)  # the same wait goes on, then gives up
    assert 0.5 < time.monotonic() - t0 < 1.5 and [g.actor_id for g in got] == ["fast", "fast"]
    # nothing is waited for when waiting is off, or when the batch is full of last-chance groups
    for late_version, fast_version, wait in ((1, 2, 0.0), (1, 1, 5.0)):
        b = _buffer(max_staleness=1, late_wait_s=wait)
        _fill(b, "slow", late_version, 1, late_version)
        lid, ids = _fill(b, "fast", fast_version, 2, fast_version)
        for pid in ids:
            b.complete(lid, _group(pid, fast_version, actor="fast"))
        t0 = time.monotonic()
        assert len(b.take(2, 2, timeout_s=5.0)) == 2 and time.monotonic() - t0 < 0.2, (late_version, wait)
