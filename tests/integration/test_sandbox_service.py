"""Sandbox service end to end: ``python -m reward_sandbox`` in a subprocess,
RemoteScorer and raw ZeroMQ clients against it, metrics over HTTP.

Covers: the three kinds, refusal of bad input with a clear message (wrong
schema, unknown type/kind/status, negative limits, oversized requests), a
sandbox worker killed mid-request (answered "killed", then business as
usual), and the Prometheus metrics.

Run: .venv/bin/python -m pytest tests/integration/test_sandbox_service.py -q
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import msgpack
import pytest
import zmq

from common import protocol, transport
from common.metrics import parse_prometheus_text
from reward_sandbox.client import RemoteScorer, RemoteScoringError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = json.dumps({"asserts": "def check(c):\n    assert c(2) == 4\n    assert c(3) == 6\n", "entry_point": "f"})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def service():
    port, mport = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reward_sandbox", "--bind", f"tcp://127.0.0.1:{port}",
                             "--workers", "2", "--math-workers", "1", "--metrics-port", str(mport)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            health = json.loads(_get(f"http://127.0.0.1:{mport}/health"))
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield {"endpoint": f"tcp://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{mport}", "proc": proc, "health": health}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture()
def scorer(service):
    s = RemoteScorer(service["endpoint"], timeout_s=60)
    yield s
    s.close()


def _raw(service, frames, timeout_s=10):
    ctx = zmq.Context()
    sock = transport.dealer(ctx, service["endpoint"], "raw-test")
    try:
        sock.send_multipart(frames)
        assert sock.poll(int(timeout_s * 1000)), "no reply"
        return protocol.decode(sock.recv_multipart())
    finally:
        sock.close(0)
        ctx.term()


def _request(**over):
    h = {"v": protocol.SCHEMA_VERSION, "type": "score_request", "request_id": "r1", "kind": "math",
         "completions": ["\\boxed{1}"], "references": ["1"], "timeout_s": 3.0, "memory_mb": 512}
    h.update(over)
    return [msgpack.packb(h)]


def test_health_reports_tier(service):
    assert service["health"]["role"] == "sandbox"
    assert service["health"]["tier"] in ("bwrap", "landlock", "rlimit")


def test_scores_all_kinds(scorer):
    assert scorer.score("math", [r"\boxed{\frac{1}{2}}", "#### 7"], ["0.5", "8"]) == [1.0, 0.0]
    got = scorer.score("code", ["def f(x):\n    return 2 * x\n", "def f(x):\n    return 4\n"], [TESTS, TESTS])
    assert got == [1.0, 0.5]
    assert scorer.score("choice", [r"\boxed{13}", "so 12"], ["[11, 13]", "[11, 13]"]) == [1.0, 0.0]
    scores, statuses = scorer.score_items("exec", ["print(input())", "import sys; sys.exit(1)"], ["x", ""])
    assert (scores, statuses) == ([1.0, 0.0], ["ok", "error"])


def test_concurrent_clients(service):
    results = {}

    def work(i):
        with RemoteScorer(service["endpoint"], timeout_s=60) as s:
            results[i] = s.score("code", [f"def f(x):\n    return {i} * x\n"], [TESTS])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [0.0], 1: [0.0], 2: [1.0], 3: [0.0]}


@pytest.mark.parametrize("over,expect", [
    ({"v": 99}, "bad_version"),
    ({"type": "launch_missiles"}, "unknown message type"),
    ({"kind": "poetry"}, "kind"),
    ({"timeout_s": -1.0}, "timeout_s"),
    ({"memory_mb": -5}, "memory_mb"),
    ({"completions": ["a", "b"]}, "references"),
    ({"completions": ["x" * (protocol.DEFAULT_LIMITS.max_text_chars + 1)]}, "too_large"),
    ({"completions": ["1"] * 2000, "references": ["1"] * 2000}, "too_large"),
])
def test_bad_requests_are_refused_with_a_message(service, over, expect):
    reply = _raw(service, _request(**over))
    assert isinstance(reply, protocol.Error)
    assert expect in f"{reply.reason}: {reply.detail}"


def test_bad_test_spec_is_refused_per_request(service):
    reply = _raw(service, _request(kind="code", completions=["print(1)"], references=["{not json"]))
    assert isinstance(reply, protocol.ScoreReply) and reply.request_id == "r1"
    assert "not valid JSON" in reply.error
    with RemoteScorer(service["endpoint"], timeout_s=30) as s:
        with pytest.raises(RemoteScoringError, match="not valid JSON"):
            s.score("code", ["print(1)"], ["{not json"])


def test_unknown_status_in_a_reply_is_refused():
    h = {"v": protocol.SCHEMA_VERSION, "type": "score_reply", "request_id": "x", "scores": [1.0],
         "statuses": ["pwned"], "error": ""}
    with pytest.raises(protocol.ProtocolError, match="unknown status"):
        protocol.decode([msgpack.packb(h)])
    with pytest.raises(protocol.ProtocolError, match="scores"):
        protocol.decode([msgpack.packb({**h, "statuses": ["ok"], "scores": [7.0]})])


def test_client_side_validation(service):
    with RemoteScorer(service["endpoint"], timeout_s=5) as s:
        with pytest.raises(ValueError, match="unknown kind"):
            s.score("poetry", ["a"], ["b"])
        with pytest.raises(ValueError, match="references"):
            s.score("math", ["a"], [])
    with pytest.raises(ValueError, match="timeout_s"):
        RemoteScorer(service["endpoint"], timeout_s=-1)


def test_no_reply_is_a_clear_timeout():
    with RemoteScorer(f"tcp://127.0.0.1:{_free_port()}", timeout_s=0.5) as s:
        with pytest.raises(TimeoutError, match="no reply"):
            s.score("math", ["1"], ["1"])


def _sandbox_processes(root_pid):
    """pids of supervisor processes (bwrap or python supervisor.py) below root_pid."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            children.setdefault(ppid, []).append((int(p), cmd))
    out, todo = [], [root_pid]
    while todo:
        for pid, cmd in children.get(todo.pop(), []):
            if cmd.startswith(b"bwrap") or b"supervisor.py" in cmd:
                out.append(pid)
            todo.append(pid)
    return out


def _with_comm(marker):
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() == marker:
                        found.append(int(p))
            except OSError:
                continue
    return found


def test_worker_killed_mid_request_is_answered_killed(service, scorer):
    marker = "kv" + uuid.uuid4().hex[:10]
    prog = f"import ctypes, time\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\ntime.sleep(20)\n"
    result = {}
    t = threading.Thread(target=lambda: result.update(r=scorer.score_items("exec", [prog], [""])))
    t.start()
    deadline = time.monotonic() + 30
    while not _with_comm(marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the program is running in its sandbox
    assert _with_comm(marker), "the program never started"
    for pid in _sandbox_processes(service["proc"].pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    t.join(timeout=60)
    assert result["r"] == ([0.0], ["killed"])
    deadline = time.monotonic() + 5
    while _with_comm(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _with_comm(marker)  # went down with its supervisor
    # replaced: the next requests are served normally
    assert scorer.score("code", ["def f(x):\n    return 2 * x\n"] * 3, [TESTS] * 3) == [1.0] * 3
    assert service["proc"].poll() is None


def test_metrics(service, scorer):
    scorer.score("code", ["def f(x):\n    return 2 * x\n", "while True: pass"], [TESTS, TESTS])
    _raw(service, _request(kind="poetry"))
    m = parse_prometheus_text(_get(service["metrics"] + "/metrics"))
    tier = service["health"]["tier"]
    assert m[f'flowrl_sandbox_isolation_tier{{tier="{tier}"}}'] == 1.0
    assert m.get(f'flowrl_sandbox_runs_total{{status="ok",tier="{tier}"}}', 0) >= 1
    assert m.get(f'flowrl_sandbox_runs_total{{status="timeout",tier="{tier}"}}', 0) >= 1
    assert m[f'flowrl_sandbox_run_duration_seconds_count{{tier="{tier}"}}'] >= 2
    assert "flowrl_sandbox_queue_depth" in m
    assert m.get('flowrl_sandbox_requests_total{kind="code"}', 0) >= 1
    assert any(k.startswith("flowrl_sandbox_request_duration_seconds_bucket") for k in m)
    assert any(k.startswith("flowrl_sandbox_rejected_requests_total") for k in m)
