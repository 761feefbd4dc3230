"""A learner killed (kill -9) and started again from scratch (``--resume never``, no
checkpoint) while its actor keeps running: the actor holds weights of versions the new
learner has not made. It must be given the new learner's weights (version 0) and train
with it. Before, the new learner leased it work, refused every group it returned as
``bad_policy_version`` and, taking no step, never broadcast: the run stood still forever."""
import signal
import time

from tests.integration.helpers import free_ports, metrics, start, wait_for


def _learner(model, ports, run_dir, log, steps):
    router, pub, weights, lmetrics = ports
    return start(["learner", "--model", model, "--actors", "1", "--max-steps", str(steps), "--resume", "never",
                  "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                  "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
                  "--set", "groups_per_step=2", "--set", "sampling.n=4", "--set", "sampling.max_tokens=8",
                  "--set", "max_staleness=1", "--set", "broadcast_timeout_s=15", "--set", "lr=1e-3",
                  "--set", "linger_s=20"], log)


def test_actors_follow_a_learner_restarted_from_scratch(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=5)
    ports = free_ports(4)
    lmetrics = ports[3]
    logs = {name: tmp_path / f"{name}.log" for name in ("learner1", "learner2", "actor")}
    steps = lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0)  # noqa: E731
    procs = {"learner1": _learner(model, ports, tmp_path / "run", logs["learner1"], steps=1000),
             "actor": start(["actors", "--n", "1", "--model", model, "--learner", f"tcp://127.0.0.1:{ports[0]}",
                             "--metrics-port", "0", "--prompts-per-batch", "2", "--reply-timeout-s", "5",
                             "--connect-timeout-s", "3"], logs["actor"])}
    try:
        wait_for(lambda: steps() >= 3, 180, "3 steps", [procs["learner1"], procs["actor"]],
                 [logs["learner1"], logs["actor"]])
        procs["learner1"].send_signal(signal.SIGKILL)
        procs["learner1"].wait()
        t0 = time.monotonic()
        procs["learner2"] = _learner(model, ports, tmp_path / "run", logs["learner2"], steps=2)
        code = procs["learner2"].wait(timeout=240)
        assert code == 0, logs["learner2"].read_text()[-3000:]
        print(f"\nlearner restarted from scratch: 2 steps done {time.monotonic() - t0:.0f} s after its start")
        assert procs["actor"].wait(timeout=60) == 0, logs["actor"].read_text()[-3000:]
        # the actor was leased nothing while it held the old run's weights: nothing was refused
        assert "bad_policy_version" not in logs["learner2"].read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
