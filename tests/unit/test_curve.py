"""CURVE on every ZeroMQ socket (issue 10, point 4), with real sockets on
loopback: the learner hub's ROUTER, the broadcaster's PUB, the sandbox
service (a real ``python -m reward_sandbox`` process), and ``python -m
common.keys``. An authorised client talks; a client with no key or an
unauthorised key gets nothing back within a timeout, while an authorised
client in the same test still gets replies. An actor id is bound to the key
that first used it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import zmq
import zmq.auth
from prometheus_client import CollectorRegistry

from actors.config import ActorConfig
from common import keys, transport
from common.config import ConfigError
from common.metrics import WeightSyncMetrics
from common.protocol import Heartbeat, VersionAnnounce
from learner.broadcaster import Broadcaster
from learner.config import LearnerConfig
from learner.hub import RunState
from reward_sandbox.client import RemoteScorer
from reward_sandbox.service import ServiceConfig
from tests.unit.test_ingest_validation import Peer, rejected, running_hub

ROOT = Path(__file__).resolve().parents[2]
SILENCE_S = 1.0  # how long a refused peer is watched for a reply that must not come


@pytest.fixture(scope="module")
def kdir(tmp_path_factory) -> Path:
    """Keys of the run, plus a second authorised client key (client2) and a stranger's keys."""
    d = tmp_path_factory.mktemp("keys")
    keys.write(d / "run")
    keys.write(d / "stranger")
    pub, _ = zmq.auth.create_certificates(d / "run", "client2")
    shutil.copy(pub, d / "run" / "authorized" / "client2.key")
    return d


def _client(kdir: Path, name: str = "client") -> keys.ClientKeys:
    k = keys.load_client(kdir / "run")
    if name == "client":
        return k
    public, secret = zmq.auth.load_certificate(kdir / "run" / f"{name}.key_secret")
    return keys.ClientKeys(public, secret, k.server_public)


def _stranger(kdir: Path) -> keys.ClientKeys:
    """A well-formed key pair that knows the right server key but is not authorised."""
    s = keys.load_client(kdir / "stranger")
    return keys.ClientKeys(s.public, s.secret, keys.load_client(kdir / "run").server_public)


@pytest.fixture()
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


# ----------------------------------------------------------------- keys CLI
def test_keys_cli_writes_the_certificates(tmp_path):
    d = tmp_path / "k"
    r = subprocess.run([sys.executable, "-m", "common.keys", str(d)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key"):
        assert (d / name).is_file(), name
    for name in ("server", "client"):
        public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")
        assert len(public) == len(secret) == 40  # Z85 of 32 bytes
        assert zmq.auth.load_certificate(d / f"{name}.key") == (public, None)
        assert stat.S_IMODE(os.stat(d / f"{name}.key_secret").st_mode) == 0o600
    assert (zmq.auth.load_certificate(d / "authorized" / "client.key")[0]
            == zmq.auth.load_certificate(d / "client.key")[0])
    assert list(zmq.auth.load_certificates(d / "authorized")) == [zmq.auth.load_certificate(d / "client.key")[0]]
    # never silently replaces keys peers still hold
    before = (d / "server.key_secret").read_text()
    again = subprocess.run([sys.executable, "-m", "common.keys", str(d)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (d / "server.key_secret").read_text() == before
    forced = subprocess.run([sys.executable, "-m", "common.keys", str(d), "--force"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert forced.returncode == 0 and (d / "server.key_secret").read_text() != before


def test_roles_read_only_what_they_need(tmp_path, kdir):
    client_only = tmp_path / "client"
    client_only.mkdir()
    for name in keys.CLIENT_FILES:
        shutil.copy(kdir / "run" / name, client_only / name)
    ActorConfig(curve_dir=str(client_only)).validate()
    assert keys.load_client(client_only).server_public == keys.load_client(kdir / "run").server_public
    with pytest.raises(ConfigError, match="curve_dir.*server.key_secret"):
        LearnerConfig(curve_dir=str(client_only)).validate()
    with pytest.raises(ValueError, match="curve_dir"):
        ServiceConfig(curve_dir=str(client_only))
    LearnerConfig(curve_dir=str(kdir / "run")).validate()
    with pytest.raises(ConfigError, match="curve_dir.*client.key_secret"):
        ActorConfig(curve_dir=str(tmp_path / "nowhere")).validate()


def test_secrets_are_not_printed(kdir):
    k = keys.load_client(kdir / "run")
    assert k.secret.decode() not in repr(k)
    s = keys.load_server(kdir / "run")
    assert s.secret.decode() not in repr(s)


# ----------------------------------------------------------------- learner ROUTER
def test_hub_talks_only_to_authorised_keys(ctx, kdir):
    with running_hub(curve_dir=str(kdir / "run")) as hub:
        good = Peer(ctx, hub, "good", curve=_client(kdir))
        assert isinstance(good.ask(Heartbeat("good", 0, 0)), Heartbeat)
        refused = [Peer(ctx, hub, "nokey"), Peer(ctx, hub, "stranger", curve=_stranger(kdir)),
                   # the right client key, but a server key that is not the learner's: handshake fails
                   Peer(ctx, hub, "wrongserver", curve=keys.ClientKeys(_client(kdir).public, _client(kdir).secret,
                                                                       keys.load_client(kdir / "stranger").server_public))]
        for p in refused:
            transport.send(p.sock, Heartbeat(p.actor_id, 0, 0))
        t0 = time.monotonic()
        while time.monotonic() - t0 < SILENCE_S:
            # the authorised client keeps being served meanwhile
            assert isinstance(good.ask(Heartbeat("good", 0, 0), timeout_s=2.0), Heartbeat)
        for p in refused:
            assert not p.sock.poll(0), f"{p.actor_id} got a reply"
        assert rejected(hub) == {}  # refused at the handshake: the hub never saw them
        assert set(hub.last_seen) == {"good"}


def test_actor_id_is_bound_to_its_key(ctx, kdir):
    with running_hub(curve_dir=str(kdir / "run")) as hub:
        a = Peer(ctx, hub, "peer-a", curve=_client(kdir))
        b = Peer(ctx, hub, "peer-b", curve=_client(kdir, "client2"))
        assert isinstance(a.ask(Heartbeat("actor-1", 0, 0)), Heartbeat)
        # another authorised key claiming actor-1: dropped unanswered, counted
        assert b.ask(Heartbeat("actor-1", 0, 0), timeout_s=SILENCE_S) is None
        assert rejected(hub) == {"identity": 1.0}
        # its own id works, and so does actor-1 from its own key
        assert isinstance(b.ask(Heartbeat("actor-2", 0, 0)), Heartbeat)
        assert isinstance(a.ask(Heartbeat("actor-1", 0, 0)), Heartbeat)
        assert hub.key_of == {"actor-1": _client(kdir).public.decode(),
                              "actor-2": _client(kdir, "client2").public.decode()}


def test_curve_off_by_default(ctx):
    with running_hub() as hub:
        assert hub.auth is None
        assert isinstance(Peer(ctx, hub, "plain").ask(Heartbeat("plain", 0, 0)), Heartbeat)
        assert hub.key_of == {}


# ----------------------------------------------------------------- learner PUB
def test_version_announcements_reach_only_authorised_subscribers(ctx, kdir):
    b = Broadcaster(pub_bind="tcp://127.0.0.1:0", advertise_host="127.0.0.1", spec=None, device=torch.device("cpu"),
                    state=RunState(),
                    metrics=WeightSyncMetrics(CollectorRegistry(), "learner"), curve_dir=str(kdir / "run"))
    b.start()
    endpoint = b.state.pub_endpoint
    good = transport.subscriber(ctx, endpoint, curve=_client(kdir))
    bad = [transport.subscriber(ctx, endpoint), transport.subscriber(ctx, endpoint, curve=_stranger(kdir))]
    try:
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:  # PUB drops what is sent before a SUB joins
            b.submit(3, [], None)
            got = transport.recv(good, 0.1)
        assert got == VersionAnnounce(3, 0)
        for _ in range(5):
            b.submit(4, [], None)
        assert transport.recv(good, 2.0) == VersionAnnounce(4, 0)
        for s in bad:
            assert not s.poll(int(SILENCE_S * 1000))
    finally:
        b.finish(timeout_s=10)


# ----------------------------------------------------------------- sandbox service
def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sandbox_service_answers_only_authorised_keys(kdir):
    port, mport = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reward_sandbox", "--bind", f"tcp://127.0.0.1:{port}",
                             "--workers", "1", "--math-workers", "1", "--metrics-port", str(mport),
                             "--curve-dir", str(kdir / "run")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert json.loads(_get(f"http://127.0.0.1:{mport}/health"))["role"] == "sandbox"
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        with RemoteScorer(endpoint, timeout_s=30, curve=_client(kdir)) as good:
            assert good.score("math", ["4", "5"], ["4", "4"]) == [1.0, 0.0]
            for curve in (None, _stranger(kdir)):
                with RemoteScorer(endpoint, timeout_s=SILENCE_S, curve=curve) as bad:
                    with pytest.raises(TimeoutError):
                        bad.score("math", ["4"], ["4"])
            assert good.score("math", ["4"], ["4"]) == [1.0]  # still served after the refusals
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_binding_is_released_with_the_peer(ctx, kdir):
    """Bindings are pruned with the peer's last_seen entry: memory stays bounded, and an id
    unheard of for the horizon may be taken by another authorised key."""
    with running_hub(curve_dir=str(kdir / "run"), peer_horizon_s=0.5) as hub:
        a = Peer(ctx, hub, "peer-a", curve=_client(kdir))
        b = Peer(ctx, hub, "peer-b", curve=_client(kdir, "client2"))
        assert isinstance(a.ask(Heartbeat("actor-1", 0, 0)), Heartbeat)
        assert b.ask(Heartbeat("actor-1", 0, 0), timeout_s=0.3) is None
        deadline = time.monotonic() + 5
        while "actor-1" in hub.key_of and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.key_of == {} and hub.last_seen == {}
        assert isinstance(b.ask(Heartbeat("actor-1", 0, 0)), Heartbeat)
        assert hub.key_of == {"actor-1": _client(kdir, "client2").public.decode()}
