"""``--give-up-after-s``: the actors launcher probes the real learner hub and keeps going while
it answers, even for longer than the limit; once the learner is gone for good (kill -9, no
restart), it stops its actor and exits 69 with one line (common/exitcodes.py)."""
import signal
import time

from common import exitcodes
from tests.integration.helpers import free_ports, metrics, start, wait_for

GIVE_UP_S = 6


def test_actors_give_up_once_the_learner_is_gone(tmp_path):
    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=6)
    router, pub, weights, lmetrics = free_ports(4)
    llog, alog = tmp_path / "learner.log", tmp_path / "actors.log"
    learner = start(["learner", "--model", model, "--actors", "1", "--max-steps", "0",
                     "--bind", f"tcp://127.0.0.1:{router}", "--pub-bind", f"tcp://127.0.0.1:{pub}",
                     "--weight-port", str(weights), "--metrics-port", str(lmetrics), "--run-dir", str(tmp_path / "run"),
                     "--set", "epochs=1000", "--set", "num_prompts=64", "--set", "groups_per_step=2", "--set", "sampling.n=2",
                     "--set", "sampling.max_tokens=6"], llog)
    # counted from the launcher's start: a learner still loading its model has not answered yet
    wait_for(lambda: "learner hub on" in llog.read_text(), 180, "learner up", [learner], [llog])
    actors = start(["actors", "--n", "1", "--model", model, "--learner", f"tcp://127.0.0.1:{router}",
                    "--metrics-port", "0", "--prompts-per-batch", "1", "--reply-timeout-s", "5",
                    "--connect-timeout-s", "2", "--give-up-after-s", str(GIVE_UP_S)], alog)
    t0 = time.monotonic()
    try:
        wait_for(lambda: (metrics(lmetrics) or {}).get("flowrl_learner_steps_total", 0) >= 2, 240, "2 steps",
                 [learner, actors], [llog, alog])
        # the learner has answered the probes all along: still running past the limit
        wait_for(lambda: time.monotonic() - t0 > 3 * GIVE_UP_S, 60, "3 x give_up_after_s", [learner, actors],
                 [llog, alog])
        assert actors.poll() is None, alog.read_text()[-3000:]
        learner.send_signal(signal.SIGKILL)  # gone for good: nothing restarts it
        learner.wait()
        t_kill = time.monotonic()
        assert actors.wait(timeout=90) == exitcodes.LEARNER_GONE, alog.read_text()[-3000:]
        waited = time.monotonic() - t_kill
    finally:
        for p in (learner, actors):
            if p.poll() is None:
                p.kill()
    # (the actor process itself may crash when its learner vanishes; the launcher restarts it)
    errors = [x for x in alog.read_text().splitlines() if x.startswith("actors: error:")]
    assert len(errors) == 1 and "no learner has answered" in errors[0], errors
    assert waited >= GIVE_UP_S - 1, waited  # measured from the last answer, not from the start
