"""The actors launcher's exit code (common/exitcodes.py) with stand-in actor processes: 0 only
when every actor ended by itself (the run is over), 143 / 130 when SIGTERM / SIGINT stopped
them first, 2 after a permanent failure, 69 once no learner has answered for
give_up_after_s; and the learner watch, against a stand-in hub."""
from __future__ import annotations

import signal
import sys
import threading
import time

import pytest

from actors.config import ActorConfig
from common import exitcodes
from tests.integration.helpers import free_ports


# Stand-in actor processes (module level: the launcher spawns them by reference).

def _ends(cfg, index):
    """An actor that hears "shutdown" soon: exit 0."""
    time.sleep(0.5)


def _waits(cfg, index):
    """An actor waiting for the learner; SIGTERM: leases handed back, exit 0 (actors/actor.py)."""
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    time.sleep(60)


def _bad_model(cfg, index):
    sys.exit(2)


def _launcher(target, **cfg):
    from actors.__main__ import Launcher

    launcher = Launcher(ActorConfig(**cfg))
    launcher.target = target
    return launcher


def _after(seconds: float, fn, *args) -> None:
    threading.Timer(seconds, fn, args).start()


def test_run_over_exits_0():
    assert _launcher(_ends, n=2).run() == exitcodes.OK


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, exitcodes.TERMINATED), (signal.SIGINT, exitcodes.INTERRUPTED)])
def test_stopped_before_the_run_is_over(signum, code):
    launcher = _launcher(_waits, n=2)
    _after(3.0, launcher.terminate, signum, None)
    t0 = time.monotonic()
    assert launcher.run() == code
    assert time.monotonic() - t0 < 30


def test_sigterm_after_the_run_is_over_keeps_0():
    launcher = _launcher(_ends, n=1)
    assert launcher.run() == exitcodes.OK
    launcher.terminate(signal.SIGTERM, None)  # the pod is deleted after its actors finished
    assert launcher.stopped_by is None


def test_permanent_failure_exits_2():
    assert _launcher(_bad_model, n=1).run() == exitcodes.ERROR


def test_gives_up_on_a_silent_learner(capsys):
    (port,) = free_ports(1)  # nobody listens
    launcher = _launcher(_waits, n=1, learner=f"tcp://127.0.0.1:{port}", give_up_after_s=2.0, connect_timeout_s=0.5)
    t0 = time.monotonic()
    assert launcher.run() == exitcodes.LEARNER_GONE
    assert 2.0 <= time.monotonic() - t0 < 30
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1 and "no learner has answered" in err[0] and "give_up_after_s" in err[0], err


def test_no_watch_by_default():
    assert ActorConfig().give_up_after_s == 0
    assert _launcher(_ends).watch is None


def test_give_up_after_s_is_validated():
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="give_up_after_s"):
        ActorConfig(give_up_after_s=-1).validate()


def test_learner_watch_hears_a_hub():
    """The probe is a heartbeat from actor id "probe"; any answer counts (the hub's real
    answer is exercised by tests/integration/test_give_up.py)."""
    import zmq

    from actors.__main__ import LearnerWatch
    from common import transport
    from common.protocol import Heartbeat, decode

    (port,) = free_ports(1)
    ctx = zmq.Context()
    hub = transport.router(ctx, f"tcp://127.0.0.1:{port}")
    seen, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            if not hub.poll(100):
                continue
            peer, *frames = hub.recv_multipart()
            seen.append(decode(frames))
            transport.send(hub, Heartbeat("learner", 0, 0), peer)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    watch = LearnerWatch(ActorConfig(learner=f"tcp://127.0.0.1:{port}", connect_timeout_s=2.0), interval_s=0.2)
    before = watch.last_answer
    watch.start()
    try:
        deadline = time.monotonic() + 20
        while watch.last_answer == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watch.last_answer > before
        assert seen and all(isinstance(m, Heartbeat) and m.actor_id == "probe" for m in seen)
    finally:
        watch.done.set()
        watch.join(10)
        stop.set()
        server.join(10)
        hub.close(linger=0)
        ctx.destroy(linger=0)


def test_a_device_the_installed_vllm_cannot_run_is_refused_at_start(tmp_path, capsys):
    """vLLM's CPU build here: --device cuda would fail in every actor's engine, each restarted
    forever (the pod stays Running, nothing counts a failure); the launcher refuses it in one
    line naming the field, before starting any actor. A device it can run passes."""
    from actors.__main__ import _preflight, main, parse_args
    from common.models import build_tiny_model

    model = str(build_tiny_model(tmp_path / "tiny", seed=0))
    capsys.readouterr()  # transformers' progress bars
    assert main(["--engine", "vllm", "--device", "cuda", "--model", model]) == exitcodes.ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device" in err[0] and "'cpu'" in err[0] and "--device cpu" in err[0], err
    _preflight(parse_args(["--engine", "vllm", "--device", "cpu", "--model", model]))
