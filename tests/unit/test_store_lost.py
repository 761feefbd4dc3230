"""An actor whose learner died (kill -9) finds its rendezvous store gone: the
weight follower says so in one line (StoreLost), which the actor treats as a
lost learner and reconnects, instead of crashing on the store's network error.
Reconnected to a learner restarted from an earlier step, it drops weights that
learner never made."""
import pytest
from prometheus_client import CollectorRegistry

from actors.weights import StoreLost, WeightFollower
from common.metrics import WeightSyncMetrics
from common.protocol import WeightRef
from common.weight_sync import open_store
from tests.integration.helpers import free_ports


def test_a_vanished_store_is_reported_as_store_lost():
    (port,) = free_ports(1)
    master = open_store("127.0.0.1", port, 5.0, master=True)  # what the learner serves
    follower = WeightFollower(None, "a1", WeightSyncMetrics(CollectorRegistry(), "actor"), held=WeightRef(0, 0))
    follower.attach({"host": "127.0.0.1", "port": port, "backend": "gloo", "timeout_s": 5.0}, [], 0)
    follower.sync()  # no generation yet: nothing to do
    del master  # the learner is gone, and its store with it
    with pytest.raises(StoreLost, match=f"127.0.0.1:{port} is unreachable"):
        follower.sync()


def test_weights_ahead_of_a_restarted_learner_are_no_version_of_its_policy():
    """A learner restarted from an earlier step (or from scratch) says its version in the
    Welcome: weights the actor holds from beyond it were never made by this learner, so the
    actor holds no valid version until a broadcast reaches it; weights at or below it stay."""
    from actors.weights import INVALID

    for held, learner, expected in ((5, 2, INVALID), (5, 0, INVALID), (2, 2, 2), (0, 0, 0), (1, 4, 1)):
        (port,) = free_ports(1)
        master = open_store("127.0.0.1", port, 5.0, master=True)
        follower = WeightFollower(None, "a1", WeightSyncMetrics(CollectorRegistry(), "actor"),
                                  held=WeightRef(7, held))
        follower.attach({"host": "127.0.0.1", "port": port, "backend": "gloo", "timeout_s": 5.0}, [], learner)
        assert follower.held == WeightRef(0, expected), (held, learner)
        del master
