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
