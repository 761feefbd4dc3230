"""The hub's seats and its failure modes, over real ZeroMQ sockets: an actor beyond the
seats is told "full" until a seat frees; a leaving actor hands its leases back and frees
its seat; a nonsense work request is dropped and counted; a crash of the hub thread
reaches the trainer as one clear error instead of a hang."""
import time

import pytest

from common import transport
from common.protocol import Error, Heartbeat, Hello, Release, Welcome, Work, WorkRequest
from tests.unit.test_ingest_validation import Peer, ctx, rejected, running_hub, wait_rejected  # noqa: F401


def counter(metric) -> float:
    return next(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def test_an_actor_beyond_the_seats_waits_for_one_to_free(ctx):  # noqa: F811
    with running_hub(seats=1) as hub:
        a, b = Peer(ctx, hub, "a"), Peer(ctx, hub, "b")
        assert isinstance(a.ask(Hello("a", "hf", "m", 1)), Welcome)
        full = b.ask(Hello("b", "hf", "m", 2))
        assert isinstance(full, Error) and full.reason == "full", full
        assert hub.members() == ("a",)
        work = a.lease(credits=3)
        # a leaves: its leases go back at once (not at their deadline) and its seat frees
        assert isinstance(a.ask(Release("a", [], True)), Heartbeat)
        assert hub.members() == () and counter(hub.metrics.leaves) == 1
        assert hub.buffer.sizes() == (0, 0)
        assert isinstance(b.ask(Hello("b", "hf", "m", 2)), Welcome)
        b.joined = True
        again = b.lease(credits=3)
        assert sorted(p.prompt_id for p in again.prompts) == sorted(p.prompt_id for p in work.prompts)
        # the departed actor's late group is refused: its lease is gone
        reply = a.ask(a.group(work))
        assert isinstance(reply, Error) and reply.reason == "unknown_actor", reply


def test_negative_credits_are_dropped_and_counted(ctx):  # noqa: F811
    with running_hub() as hub:
        peer = Peer(ctx, hub, "a")
        assert peer.ask(WorkRequest("a", -1, 0), timeout_s=0.5) is None
        assert wait_rejected(hub, 1) == {"bad_field": 1}
        assert isinstance(peer.ask(WorkRequest("a", 1, 0)), Work)  # and it goes on


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is the point
def test_a_crash_in_the_hub_thread_reaches_the_trainer(ctx, monkeypatch):  # noqa: F811
    with pytest.raises(RuntimeError, match=r"hub thread crashed: .*disk on fire"):
        with running_hub() as hub:
            peer = Peer(ctx, hub, "a")
            work = peer.lease()

            def broken(lease_id, group):
                raise OSError("disk on fire")
            monkeypatch.setattr(hub.buffer, "complete", broken)
            transport.send(peer.sock, peer.group(work))
            deadline = time.monotonic() + 5
            while hub.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not hub.is_alive()
            hub.check()  # what the trainer calls every step


def test_an_actor_ahead_of_the_learner_gets_no_work(ctx):  # noqa: F811
    """Weights of version 3 held by an actor that outlived its learner, now restarted at
    version 1 (or from scratch): this learner never made them, and every group they produce
    would be refused as bad_policy_version after locking its prompts for the lease timeout."""
    with running_hub() as hub:
        hub.state.policy_version = 1
        peer = Peer(ctx, hub, "a")
        ahead = peer.ask(WorkRequest("a", 4, 3))
        assert isinstance(ahead, Work) and ahead.prompts == [] and ahead.retry_after_s > 0
        assert hub.buffer.sizes() == (0, 0)
        assert len(peer.ask(WorkRequest("a", 4, 1)).prompts) == 4  # once it holds this learner's weights


def test_a_members_new_session_hands_back_its_leases_and_re_forms_the_group(ctx):  # noqa: F811
    """An actor that lost the learner for a while reconnects and says hello again: its old
    session's work will never be acked (its socket is gone), so its prompts go back at once,
    not at the lease deadline; it left its weight group, so the membership changes (a new
    epoch, the broadcaster's cue to re-form) though the ids stay the same."""
    with running_hub() as hub:
        a = Peer(ctx, hub, "a")
        assert isinstance(a.ask(Hello("a", "hf", "m", 1)), Welcome)
        a.joined = True
        a.lease(credits=3)
        epoch, members = hub.membership()
        assert members == ("a",) and hub.buffer.sizes() == (0, 3)
        a.sock.close(linger=0)
        again = transport.dealer(ctx, hub.endpoint, "a/2")  # the new session's socket, as the actor names it
        transport.send(again, Hello("a", "hf", "m", 1))
        assert isinstance(transport.recv(again, 5.0), Welcome)
        assert hub.membership() == (epoch + 1, ("a",))
        assert hub.buffer.sizes() == (0, 0)
        assert counter(hub.metrics.joins) == 1  # the same member, not a second one
