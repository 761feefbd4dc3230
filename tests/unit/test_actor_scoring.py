"""A scorer that keeps failing does not kill the actor: it is retried, then the
batch is given up (its prompts go back to the learner, see Actor._deliver). Here the
real sandbox client talks to an endpoint where nothing answers; the whole path, lease handed
back and training after the service comes up, is tests/integration/test_reward_outage.py."""
import time

from prometheus_client import CollectorRegistry

from actors.actor import SCORE_TRIES, Actor
from common.metrics import ActorMetrics
from reward_sandbox.client import RemoteScorer
from tests.integration.helpers import free_ports


def test_failing_scorer_is_retried_then_given_up():
    (port,) = free_ports(1)
    a = Actor.__new__(Actor)  # only the scoring path: no engine, no learner
    a.index, a.metrics = 0, ActorMetrics(CollectorRegistry())
    a.scorer = RemoteScorer(f"tcp://127.0.0.1:{port}", timeout_s=0.3)
    t0 = time.monotonic()
    try:
        assert a._score("math", ["1", "2"], ["1", "2"]) is None
    finally:
        a.scorer.close()
    failures = next(s.value for m in a.metrics.score_failures.collect() for s in m.samples if s.name.endswith("_total"))
    assert failures == SCORE_TRIES
    assert time.monotonic() - t0 < 10  # bounded: tries x timeout + backoff
