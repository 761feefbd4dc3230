"""A seat holder named in a weight-group generation that never joins it (crashed
between its hello and the group, or hung): the learner's broadcaster evicts it
after the group's timeout ("join_timeout"), the member that did come gives up on
that generation instead of hanging in it, and the next generation, without the
absent one, forms and delivers the newest weights. Real TCPStore, real gloo
groups, the real HF engine and weight follower on the actor side."""
import time

import torch
from prometheus_client import CollectorRegistry

from actors.engine_hf import HFEngine
from actors.weights import WeightFollower
from common.metrics import WeightSyncMetrics
from common.models import build_tiny_model, load_model
from common.protocol import WeightRef
from common.weight_sync import WeightGroupSpec, make_manifest
from learner.broadcaster import Broadcaster
from learner.hub import RunState
from tests.integration.helpers import free_ports

TIMEOUT_S = 3.0


def test_a_member_that_never_joins_is_evicted_and_the_rest_get_the_weights(tmp_path):
    model = build_tiny_model(tmp_path / "tiny", seed=3)
    torch.manual_seed(0)
    named = [(n, p.detach() + 0.01 * torch.randn_like(p)) for n, p in load_model(model).named_parameters()]
    (port,) = free_ports(1)
    seats, evicted = ["a1", "a2"], []

    def evict(ids, reason):
        evicted.append((list(ids), reason))
        for i in ids:
            seats.remove(i)

    b = Broadcaster(pub_bind="tcp://127.0.0.1:0", advertise_host="127.0.0.1",
                    spec=WeightGroupSpec("127.0.0.1", port, 1, 0, "gloo", TIMEOUT_S, 0), device=torch.device("cpu"),
                    state=RunState(), metrics=WeightSyncMetrics(CollectorRegistry(), "learner"),
                    membership=lambda: (len(seats), tuple(seats)), evict=evict)
    engine = HFEngine(model, device="cpu", dtype="float32", seed=0)
    follower = WeightFollower(engine, "a1", WeightSyncMetrics(CollectorRegistry(), "actor"), held=WeightRef(0, 0))
    b.submit(1, named, None)
    t0 = time.monotonic()
    b.start()
    try:
        follower.attach({"host": "127.0.0.1", "port": port, "backend": "gloo", "timeout_s": TIMEOUT_S},
                        make_manifest(named), 0)
        while follower.held.version != 1 and time.monotonic() - t0 < 10 * TIMEOUT_S:
            follower.sync()  # what the actor does between generation batches
            b.check()
            time.sleep(0.05)
        took = time.monotonic() - t0
    finally:
        b.finish(timeout_s=2 * TIMEOUT_S)
        follower.leave()
    assert evicted == [(["a2"], "join_timeout")]
    assert follower.held == WeightRef(1, 1), follower.held
    assert follower.skip == 1  # it gave up on generation 1 (formed for two), then joined generation 2
    assert b.generation == 2
    params = dict(engine.model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in named)
    assert TIMEOUT_S <= took < 4 * TIMEOUT_S  # waited out the absent member once, not more
