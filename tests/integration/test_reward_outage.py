"""A reward service that never answers (a socket that takes every request and says
nothing): the actor retries each scoring SCORE_TRIES times, then hands its lease back
at once (the hub re-queues the prompts instead of waiting out the lease) and goes on;
once a real service comes up on that endpoint, training proceeds and the run ends
normally. The prompts come from a parquet file in veRL's dataset layout. Real learner,
actor and sandbox service processes, real ZeroMQ."""
import pyarrow as pa
import pyarrow.parquet as pq
import zmq

from actors.actor import SCORE_TRIES
from tests.integration.helpers import free_ports, metrics, start, wait_for


def test_actor_hands_work_back_while_the_scorer_is_silent_then_trains(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=9)
    router, pub, weights, lmetrics, ametrics, sandbox = free_ports(6)
    llog, alog, slog = tmp_path / "learner.log", tmp_path / "actor.log", tmp_path / "sandbox.log"
    tasks = tmp_path / "tasks.parquet"  # in veRL's layout, as its preprocessing scripts write it
    pq.write_table(pa.Table.from_pylist([
        {"data_source": "sums", "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
         "prompt": [{"role": "system", "content": "Answer in \\boxed{}."},
                    {"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(6)]), tasks)
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)  # takes requests, never replies
    silent.bind(f"tcp://127.0.0.1:{sandbox}")
    learner = start(["learner", "--model", model, "--actors", "1", "--max-steps", "2",
                     "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                     "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(tmp_path / "run"),
                     "--set", f"tasks={tasks}", "--set", "groups_per_step=1", "--set", "sampling.n=2", "--set", "sampling.max_tokens=6",
                     "--set", "linger_s=10"], llog)
    actor = start(["actors", "--n", "1", "--model", model, "--learner", f"tcp://127.0.0.1:{router}",
                   "--metrics-port", str(ametrics), "--prompts-per-batch", "1", "--reply-timeout-s", "2",
                   "--reward-endpoint", f"tcp://127.0.0.1:{sandbox}"], alog)
    service = None
    procs, logs = [learner, actor], [llog, alog]
    try:
        released = wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_hub_prompts_released_total"), 120,
                            "a lease handed back", procs, logs)
        assert released >= 1
        assert (metrics(ametrics) or {}).get("flowrl_actor_score_failures_total", 0) >= SCORE_TRIES
        assert (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0) == 0
        assert silent.poll(0)  # the requests did reach the silent peer
        silent.close(linger=0)
        service = start(["reward_sandbox", "--bind", f"tcp://127.0.0.1:{sandbox}", "--workers", "1",
                         "--metrics-port", "0"], slog)
        wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total") == 2, 180, "2 steps",
                 procs + [service], logs + [slog])
        assert actor.wait(timeout=60) == 0, alog.read_text()[-3000:]
        assert learner.wait(timeout=60) == 0, llog.read_text()[-3000:]
    finally:
        ctx.destroy(linger=0)
        for p in (learner, actor, service):
            if p is not None and p.poll() is None:
                p.kill()
