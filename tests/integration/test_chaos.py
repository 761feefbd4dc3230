"""Chaos: a learner and actors from three launchers over one epoch, broken on purpose.

kill -9 one actor launcher mid-run (its actor dies with it), kill -9 the learner
and restart it with ``--resume auto``, start a new launcher late, and kill -9 one
actor process (its launcher restarts it). The run
must end by itself: learner and surviving launchers exit 0, steps.jsonl holds
steps 1..S with every prompt exactly once, the eviction is counted before the
learner dies and the resume after it comes back.
"""
import json
import signal
import time

from tests.integration.helpers import free_ports, metrics, start, wait_for

PROMPTS = 200
GROUPS_PER_STEP = 2


def _learner(model, ports, run_dir, log):
    router, pub, weights, lmetrics = ports
    return start(["learner", "--model", model, "--actors", "4", "--max-steps", "0", "--resume", "auto",
                  "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                  "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(run_dir),
                  "--checkpoint-every", "2",
                  "--set", "epochs=1", "--set", f"num_prompts={PROMPTS}", "--set", f"groups_per_step={GROUPS_PER_STEP}",
                  "--set", "sampling.n=4", "--set", "sampling.max_tokens=8", "--set", "max_staleness=2",
                  "--set", "broadcast_timeout_s=15", "--set", "actor_timeout_s=20", "--set", "lease_timeout_s=30",
                  "--set", "lr=1e-3", "--set", "linger_s=40"], log)


def _launcher(model, router, log):
    return start(["actors", "--n", "1", "--model", model, "--learner", f"tcp://127.0.0.1:{router}",
                  "--metrics-port", "0", "--prompts-per-batch", "1", "--reply-timeout-s", "6",
                  "--connect-timeout-s", "3"], log)


def _steps(lmetrics) -> float:
    return (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0)


def test_run_survives_actor_and_learner_kills(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=7)
    ports = free_ports(4)
    router, lmetrics = ports[0], ports[3]
    run_dir = tmp_path / "run"
    logs = {name: tmp_path / f"{name}.log" for name in ("learner1", "learner2", "a", "b", "c")}
    procs = {"learner1": _learner(model, ports, run_dir, logs["learner1"]),
             "a": _launcher(model, router, logs["a"]), "b": _launcher(model, router, logs["b"])}
    t0 = time.monotonic()
    try:
        live = lambda *names: ([procs[n] for n in names], [logs[n] for n in names])  # noqa: E731
        wait_for(lambda: _steps(lmetrics) >= 3, 180, "3 steps", *live("learner1", "a", "b"))
        procs["b"].send_signal(signal.SIGKILL)  # launcher and, by PDEATHSIG, its actor
        t_kill = time.monotonic()
        # the dead member fails the next broadcast (or goes silent) and is evicted; training goes on
        evicted = wait_for(lambda: sum(v for k, v in (metrics(lmetrics) or {}).items()
                                       if k.startswith("flowrl_hub_evictions_total")), 120, "eviction",
                           *live("learner1", "a"))
        before = _steps(lmetrics)
        wait_for(lambda: _steps(lmetrics) >= before + 2, 120, "training after the actor kill", *live("learner1", "a"))
        actor_recovery_s = time.monotonic() - t_kill
        assert evicted >= 1

        procs["learner1"].send_signal(signal.SIGKILL)
        procs["learner1"].wait()
        t_kill = time.monotonic()
        procs["learner2"] = _learner(model, ports, run_dir, logs["learner2"])
        procs["c"] = _launcher(model, router, logs["c"])  # a newcomer, late
        resumed = wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_resumed_from_step"), 180,
                           "resume", *live("learner2", "a", "c"))
        wait_for(lambda: _steps(lmetrics) >= 1, 180, "training after the learner kill", *live("learner2", "a", "c"))
        learner_recovery_s = time.monotonic() - t_kill
        # an actor process (not its launcher) crashes: the launcher restarts it, the others go on
        import psutil
        (child,) = [c for c in psutil.Process(procs["a"].pid).children()
                    if "resource_tracker" not in " ".join(c.cmdline())]
        child.kill()
        wait_for(lambda: "restarting in" in logs["a"].read_text(), 30, "actor restart", *live("learner2", "a", "c"))
        final = wait_for(lambda: metrics(lmetrics) if procs["learner2"].poll() is None else None, 5, "metrics")
        assert procs["learner2"].wait(timeout=240) == 0, logs["learner2"].read_text()[-3000:]
        for name in ("a", "c"):  # within the learner's linger they hear that the run is over
            assert procs[name].wait(timeout=120) == 0, logs[name].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    rows = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    trained = sorted(i for r in rows for i in r["prompt_ids"])
    assert trained == list(range(PROMPTS)), trained  # every prompt exactly once, across both kills
    assert len(rows) == PROMPTS // GROUPS_PER_STEP
    assert resumed >= 2 and resumed % 2 == 0  # checkpoints every 2 steps
    assert final["flowrl_learner_resumes_total"] == 1
    print(f"\nchaos: actor kill -> training again in {actor_recovery_s:.1f} s; learner kill -> "
          f"training again in {learner_recovery_s:.1f} s; whole run {time.monotonic() - t0:.0f} s")
