"""Sandbox service: score requests from actors over ZeroMQ.

    python -m reward_sandbox --bind tcp://*:5557 --workers 8 --metrics-port 9105

One ROUTER socket; requests and replies are common.protocol ScoreRequest /
ScoreReply (msgpack header, validated with limits on decode). Each request is
scored on a thread of its own against the shared pools; the main loop alone
touches the ROUTER (zmq sockets are not thread-safe), and finished replies
reach it through an inproc PULL socket.

Every request is answered: a request that fails validation gets a ScoreReply
with ``error`` set (or, when not even its id could be read, a protocol Error
message); a sandbox worker that dies is replaced by the Runner and its items
come back with status "killed"; when too many requests are in flight the new
one is refused with error "overloaded" rather than queued without bound.

With ``curve_dir`` (``--curve-dir``, a folder from ``python -m common.keys``)
the ROUTER is a CURVE server that accepts only the client keys in
``curve_dir/authorized``; any other peer never completes the handshake and
gets nothing back, not even an error.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zmq
from prometheus_client import CollectorRegistry

from common import keys, protocol, transport
from common.metrics import MetricsServer

from .metrics import SandboxMetrics
from .scorer import LocalScorer

log = logging.getLogger("reward_sandbox.service")


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = "tcp://*:5557"
    workers: int = 4
    """Code sandbox slots (parallel programs)."""
    math_workers: int = 2
    max_inflight: int = 64
    """Requests being scored at once; more are refused with "overloaded"."""
    max_items: int = 1024
    """Completions per request."""
    metrics_port: int | None = None
    tier: str = "auto"
    curve_dir: str = ""
    """Key folder (python -m common.keys) turning CURVE on; empty: off. Reads server.key_secret and authorized/."""

    def __post_init__(self) -> None:
        for name in ("workers", "math_workers", "max_inflight", "max_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ServiceConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.bind, str) or "://" not in self.bind:
            raise ValueError(f"ServiceConfig.bind must be a zmq endpoint like tcp://*:5557, got {self.bind!r}")
        if self.metrics_port is not None and not (isinstance(self.metrics_port, int) and 0 <= self.metrics_port < 65536):
            raise ValueError(f"ServiceConfig.metrics_port must be a port number, got {self.metrics_port!r}")
        if self.curve_dir and keys.missing(self.curve_dir, keys.SERVER_FILES):
            raise ValueError(f"ServiceConfig.curve_dir: {self.curve_dir} lacks "
                             f"{', '.join(keys.missing(self.curve_dir, keys.SERVER_FILES))}; "
                             f"create it with: python -m common.keys DIR")


class SandboxService:
    def __init__(self, config: ServiceConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = SandboxMetrics(self.registry)
        self.scorer = LocalScorer(math_workers=config.math_workers, code_workers=config.workers,
                                  tier=config.tier, metrics=self.metrics)
        self.isolation = self.scorer.runner().isolation  # probe now, fail fast, log the tier
        self.ctx = zmq.Context()
        server_keys = keys.load_server(config.curve_dir) if config.curve_dir else None
        # the ZAP handler must answer before the first client connects: start it before binding
        self.auth = transport.start_authenticator(self.ctx, server_keys) if server_keys is not None else None
        self.sock = transport.router(self.ctx, config.bind, curve=server_keys)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._done_addr = f"inproc://sandbox-done-{id(self)}"
        self._done = self.ctx.socket(zmq.PULL)
        self._done.bind(self._done_addr)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=config.max_inflight, thread_name_prefix="score")
        self._inflight = 0
        self._stop = threading.Event()
        self.http = MetricsServer(self.registry, config.metrics_port, self.health) if config.metrics_port is not None else None
        log.info("sandbox service on %s, tier %s, %d code workers", self.endpoint, self.isolation.tier, config.workers)

    def health(self) -> dict:
        return {"role": "sandbox", "tier": self.isolation.tier, "inflight": self._inflight}

    # -- worker threads ------------------------------------------------------
    def _push(self, identity: bytes, msg) -> None:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self._local.push = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(self._done_addr)
        sock.send_multipart([identity] + protocol.encode(msg))

    def _score(self, identity: bytes, req: protocol.ScoreRequest) -> None:
        t0 = time.monotonic()
        try:
            scores, statuses = self.scorer.score_items(req.kind, req.completions, req.references,
                                                       timeout_s=float(req.timeout_s), memory_mb=req.memory_mb)
            reply = protocol.ScoreReply(req.request_id, scores, statuses)
            self.metrics.requests.labels(req.kind).inc()
        except (ValueError, TypeError) as exc:  # a bad test spec or limit: the client's mistake, say which
            reply = protocol.ScoreReply(req.request_id, [], [], error=f"bad request: {exc}")
            self.metrics.rejected.labels("bad_request").inc()
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer the request, never lose it
            log.exception("scoring request %s failed", req.request_id)
            reply = protocol.ScoreReply(req.request_id, [], [], error=f"internal error: {type(exc).__name__}: {exc}")
            self.metrics.rejected.labels("internal").inc()
        self.metrics.request_seconds.labels(req.kind).observe(time.monotonic() - t0)
        self._push(identity, reply)

    # -- main loop -------------------------------------------------------------
    def _refuse(self, identity: bytes, request_id: str | None, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        if request_id is None:
            transport.send(self.sock, protocol.Error(reason, detail), identity)
        else:
            transport.send(self.sock, protocol.ScoreReply(request_id, [], [], error=f"{reason}: {detail}"), identity)

    def _handle(self, frames: list) -> None:
        if len(frames) < 2:
            return
        identity = bytes(frames[0].buffer)
        try:
            msg = protocol.decode(frames[1:])
        except protocol.ProtocolError as exc:
            self._refuse(identity, None, exc.reason, exc.detail)
            return
        if not isinstance(msg, protocol.ScoreRequest):
            self._refuse(identity, None, "bad_type", f"expected score_request, got {msg.TYPE}")
            return
        if len(msg.completions) > self.config.max_items:
            self._refuse(identity, msg.request_id, "too_large", f"{len(msg.completions)} items, limit {self.config.max_items}")
            return
        if self._inflight >= self.config.max_inflight:
            self._refuse(identity, msg.request_id, "overloaded", f"{self._inflight} requests in flight")
            return
        self._inflight += 1
        self.metrics.queue_depth.set(self._inflight)
        self._pool.submit(self._score, identity, msg)

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._done, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(200):
                if sock is self._done:
                    self.sock.send_multipart(self._done.recv_multipart(copy=False), copy=False)
                    self._inflight -= 1
                    self.metrics.queue_depth.set(self._inflight)
                else:
                    self._handle(transport.recv_frames(self.sock))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
        self.scorer.close()
        if self.http is not None:
            self.http.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)
