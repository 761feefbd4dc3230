"""SIGTERM is a graceful stop for both roles. An actor hands its leases back and
leaves; the learner finishes its step, checkpoints, and a learner started again
with --resume auto continues from that checkpoint. Stopped before the run is
over, both exit 143 (common/exitcodes.py: a Kubernetes Job must not count it as
done); at the end of the run, 0. The multi-rank launcher stops every rank."""
import json
import signal

from common import exitcodes
from tests.integration.helpers import free_ports, metrics, start, wait_for


def test_sigterm_stops_actor_and_learner_cleanly(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=4)
    router, pub, weights, lmetrics = free_ports(4)
    run_dir = tmp_path / "run"
    args = ["learner", "--model", model, "--actors", "2", "--max-steps", "0", "--resume", "auto",
            "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
            "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
            "--set", "epochs=1", "--set", "num_prompts=60", "--set", "groups_per_step=2", "--set", "sampling.n=2",
            "--set", "sampling.max_tokens=6", "--set", "lr=1e-3"]
    llog, alog, blog = tmp_path / "learner.log", tmp_path / "a.log", tmp_path / "b.log"
    learner = start(args, llog)
    actor_args = ["actors", "--n", "1", "--model", model, "--learner", f"tcp://127.0.0.1:{router}",
                  "--metrics-port", "0", "--prompts-per-batch", "1", "--reply-timeout-s", "5"]
    a = start(actor_args, alog)
    b = None
    try:
        wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0) >= 2, 180, "2 steps",
                 [learner, a], [llog, alog])
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=60) == exitcodes.TERMINATED, alog.read_text()[-2000:]
        assert "leases handed back" in alog.read_text()
        left = wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_hub_leaves_total"), 30, "leave counted",
                        [learner], [llog])
        assert left == 1
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=60) == exitcodes.TERMINATED, llog.read_text()[-3000:]
        ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
        assert ckpts and not json.loads((ckpts[-1] / "meta.json").read_text())["finished"]
        stopped_at = json.loads((ckpts[-1] / "meta.json").read_text())["step"]

        learner = start(args, llog)  # same run_dir: resumes and trains the rest of the epoch
        b = start(actor_args, blog)
        assert learner.wait(timeout=240) == exitcodes.OK, llog.read_text()[-3000:]  # the run is over
        assert b.wait(timeout=60) == exitcodes.OK, blog.read_text()[-2000:]
    finally:
        for p in (learner, a, b):
            if p is not None and p.poll() is None:
                p.kill()
    rows = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31)) and stopped_at >= 2
    assert sorted(i for r in rows for i in r["prompt_ids"]) == list(range(60))


def test_sigterm_stops_every_rank_of_the_launcher(tmp_path):
    """``--gpus 2`` on CPU: two gloo ranks under the launcher. SIGTERM to the launcher reaches
    both; rank 0 stops them after the step in progress (here: waiting for groups, no actor
    ever joins), the checkpoint is written, every rank exits 143 and so does the launcher."""
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=5)
    router, pub, weights, lmetrics = free_ports(4)
    run_dir = tmp_path / "run"
    log = tmp_path / "learner.log"
    learner = start(["learner", "--gpus", "2", "--model", model, "--actors", "1", "--max-steps", "0",
                     "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                     "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
                     "--set", "epochs=1", "--set", "num_prompts=8", "--set", "groups_per_step=2", "--set", "sampling.n=2",
                     "--set", "linger_s=60"], log)
    try:
        wait_for(lambda: "learner hub on" in log.read_text(), 180, "learner up", [learner], [log])
        learner.send_signal(signal.SIGTERM)
        # linger_s=60 is not waited out after SIGTERM: the grace period is for the checkpoint
        assert learner.wait(timeout=60) == exitcodes.TERMINATED, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
    text = log.read_text()
    assert "learner rank 0 stopped" in text and "learner rank 1 stopped" in text, text[-3000:]
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and not json.loads((ckpts[-1] / "meta.json").read_text())["finished"]
