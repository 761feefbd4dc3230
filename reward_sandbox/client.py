"""RemoteScorer: LocalScorer's interface, scored by a sandbox service.

    scorer = RemoteScorer("tcp://sandbox:5557", timeout_s=120)
    scorer.score("code", completions, references)   # -> list[float]
    scorer.close()

The actors use it when started with ``--reward-endpoint``. Requests larger
than the protocol's per-message limit are split. A reply that does not come
within timeout_s raises TimeoutError; a refused request raises
RemoteScoringError with the service's message. Thread-safe (one request at a
time per scorer).

With ``curve=common.keys.load_client(DIR)`` the socket is a CURVE client; a
service that does not accept the key never answers (the request times out).
"""

from __future__ import annotations

import threading
import time
import uuid

import zmq

from common import protocol, transport
from common.keys import ClientKeys

ITEM_TIMEOUT_S = {"math": 3.0, "code": 5.0, "choice": 1.0, "exec": 5.0}


class RemoteScoringError(RuntimeError):
    pass


class RemoteScorer:
    def __init__(self, endpoint: str, timeout_s: float = 120.0, *, item_timeout_s: float | None = None,
                 memory_mb: int = 512, curve: ClientKeys | None = None) -> None:
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"RemoteScorer.timeout_s must be > 0, got {timeout_s!r}")
        if item_timeout_s is not None and not (0 < item_timeout_s <= protocol.MAX_SCORE_TIMEOUT_S):
            raise ValueError(f"RemoteScorer.item_timeout_s must be in (0, {protocol.MAX_SCORE_TIMEOUT_S}]")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.item_timeout_s = item_timeout_s
        self.memory_mb = memory_mb
        self._ctx = zmq.Context()
        self._sock = transport.dealer(self._ctx, endpoint, f"scorer-{uuid.uuid4().hex[:12]}", curve=curve)
        self._lock = threading.Lock()
        self.last_statuses: list[str] = []

    def score(self, kind: str, completions: list[str], references: list[str]) -> list[float]:
        return self.score_items(kind, completions, references)[0]

    def score_items(self, kind: str, completions: list[str], references: list[str]) -> tuple[list[float], list[str]]:
        if kind not in protocol.SCORE_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {protocol.SCORE_KINDS}")
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        step = protocol.DEFAULT_LIMITS.max_seqs_per_message
        scores: list[float] = []
        statuses: list[str] = []
        with self._lock:
            for i in range(0, len(completions), step):
                s, st = self._one(kind, list(completions[i:i + step]), list(references[i:i + step]))
                scores += s
                statuses += st
        self.last_statuses = statuses
        return scores, statuses

    def _one(self, kind: str, completions: list[str], references: list[str]) -> tuple[list[float], list[str]]:
        rid = uuid.uuid4().hex
        item_t = self.item_timeout_s or ITEM_TIMEOUT_S[kind]
        transport.send(self._sock, protocol.ScoreRequest(rid, kind, completions, references, item_t, self.memory_mb))
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from the sandbox service at {self.endpoint} within {self.timeout_s:g} s")
            msg = transport.recv(self._sock, left)
            if msg is None:
                continue
            if isinstance(msg, protocol.Error):
                raise RemoteScoringError(f"sandbox service refused the request: {msg.reason}: {msg.detail}")
            if isinstance(msg, protocol.ScoreReply) and msg.request_id == rid:
                if msg.error:
                    raise RemoteScoringError(f"sandbox service refused the request: {msg.error}")
                if len(msg.scores) != len(completions):
                    raise RemoteScoringError(f"{len(msg.scores)} scores for {len(completions)} completions")
                return [float(s) for s in msg.scores], list(msg.statuses)
            # anything else is a late reply to a request we gave up on: drop it

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "RemoteScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
