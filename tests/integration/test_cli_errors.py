"""Bad input at start: one readable line on stderr, exit code 2, no traceback."""
import subprocess
import sys

import pytest

from tests.integration.helpers import REPO, free_ports


def _run(*args, timeout=120):
    p = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if "error" in x.lower()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("role", ["learner", "actors"])
def test_wrong_model_path(role, tmp_path):
    code, _, err = _run(role, "--model", str(tmp_path / "no-such-model"))
    assert code == 2
    assert "no-such-model" in _one_line(err)


def test_actors_started_first_wait_for_the_learner(tmp_path):
    """Start order does not matter: with no learner, the actor keeps saying hello with
    backoff, logging where it tries, and SIGTERM still stops it cleanly (exit 143: stopped
    before the run was over)."""
    import signal
    import subprocess
    import sys
    import time

    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    (port,) = free_ports(1)
    log = tmp_path / "actors.log"
    p = subprocess.Popen([sys.executable, "-m", "actors", "--model", model, "--learner", f"tcp://127.0.0.1:{port}",
                          "--connect-timeout-s", "1", "--metrics-port", "0"], cwd=REPO, stdout=open(log, "w"),
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "attempt 2" not in log.read_text() and time.monotonic() < deadline:
            assert p.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        assert f"waiting for the learner at tcp://127.0.0.1:{port}" in log.read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143, log.read_text()[-2000:]  # common.exitcodes.TERMINATED
        assert "leases handed back" in log.read_text()
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("flag,field", [("algo.beta=0", "algo.beta"), ("algo.is_clip_low=2", "algo.is_clip_low"),
                                        ("algo.algorithm=dpo", "algo.algorithm"), ("sampling.n=1", "sampling.n"),
                                        ("tasks=/nonexistent/train.jsonl", "tasks"),
                                        ("resume=/nonexistent/step-00000001", "resume")])
def test_bad_learner_config(flag, field):
    code, _, err = _run("learner", "--set", flag)
    assert code == 2
    assert field in _one_line(err)


def test_learner_port_in_use(tmp_path):
    import zmq

    from common.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    port, metrics_port, pub = free_ports(3)
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.ROUTER)
    squatter.bind(f"tcp://127.0.0.1:{port}")
    try:
        code, _, err = _run("learner", "--model", model, "--bind", f"tcp://127.0.0.1:{port}",
                            "--pub-bind", f"tcp://127.0.0.1:{pub}", "--metrics-port", str(metrics_port),
                            "--run-dir", str(tmp_path / "run"), "--actors", "0")
    finally:
        ctx.destroy(linger=0)
    assert code == 2
    assert "cannot open a socket" in _one_line(err)
