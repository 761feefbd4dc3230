"""Pool of killable math-verification worker processes with hard deadlines.

math-verify can be driven into super-exponential work (a power tower inside
\\frac has hung it for minutes) and its own timeout relies on signal.alarm,
which only works in a main thread and cannot interrupt C code. So every
comparison runs in a separate process (reward_sandbox/_math_worker.py) with
an address-space limit; when the deadline passes the parent SIGKILLs it and
starts a replacement. Absurd answers never get that far (math_extract.py).

Usage:
    pool = MathPool(MathPoolConfig(workers=2))
    pool.verify_many([("1/2", "0.5")], timeout_s=3.0)  # -> [MathResult(...)]
    pool.close()

Thread-safe: concurrent callers share the workers; each call checks out the
workers it uses.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_WORKER = str(Path(__file__).with_name("_math_worker.py"))
# A fresh worker imports sympy + math_verify; allow for a loaded machine.
STARTUP_TIMEOUT_S = 60.0
# Grace on top of the caller's timeout so that math-verify's own alarm can
# answer first in the common case (cheaper than a kill + respawn).
KILL_GRACE_S = 0.5


@dataclass(frozen=True)
class MathPoolConfig:
    workers: int = 2
    memory_mb: int = 1536

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"MathPoolConfig.workers must be an int >= 1, got {self.workers!r}")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 256:
            raise ValueError(f"MathPoolConfig.memory_mb must be an int >= 256, got {self.memory_mb!r}")


@dataclass(frozen=True)
class MathResult:
    equal: bool
    status: str  # "ok", "error", "timeout", "killed" (worker died), "refused"
    detail: str = ""


class _Worker:
    def __init__(self, memory_mb: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", _WORKER, str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env={},
            start_new_session=True,
            close_fds=True,
        )
        # The worker caps itself too; this makes the cap independent of it.
        limit = memory_mb * 1024 * 1024
        try:
            resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (limit, limit))
        except ProcessLookupError:
            pass  # died at once; noticed when it is first used
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.ready = False

    def lines(self) -> list[bytes] | None:
        """Read what is available; None on EOF (the worker died)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def send(self, obj: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class MathPool:
    def __init__(self, config: MathPoolConfig | None = None) -> None:
        self.config = config or MathPoolConfig()
        self._lock = threading.Condition()
        self._idle: list[_Worker] = [_Worker(self.config.memory_mb) for _ in range(self.config.workers)]
        self._closed = False
        self.kills = 0  # workers killed on deadline or found dead; for metrics/tests

    # -- worker checkout -------------------------------------------------
    def _checkout(self, want: int) -> list[_Worker]:
        with self._lock:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("MathPool is closed")
                self._lock.wait()
            n = max(1, min(want, len(self._idle)))
            taken, self._idle = self._idle[:n], self._idle[n:]
            return taken

    def _checkin(self, workers: list[_Worker]) -> None:
        with self._lock:
            if self._closed:
                for w in workers:
                    w.kill()
                return
            self._idle.extend(workers)
            self._lock.notify_all()

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        self.kills += 1
        return _Worker(self.config.memory_mb)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._idle]

    # -- the work ---------------------------------------------------------
    def _wait_ready(self, w: _Worker) -> _Worker:
        """Block until w has imported math_verify; replace it if it died."""
        for _attempt in range(3):
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            sel = selectors.DefaultSelector()
            sel.register(w.fd, selectors.EVENT_READ)
            try:
                while not w.ready and time.monotonic() < deadline:
                    sel.select(timeout=max(0.0, deadline - time.monotonic()))
                    lines = w.lines()
                    if lines is None:
                        break
                    if any(b'"ready"' in ln for ln in lines):
                        w.ready = True
            finally:
                sel.close()
            if w.ready:
                return w
            w = self._replace(w)
        raise RuntimeError("math verification worker failed to start three times")

    def verify_many(self, pairs: list[tuple[str, str]], timeout_s: float = 3.0) -> list[MathResult]:
        """Compare (pred_answer, gold_answer) pairs; results in input order."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not pairs:
            return []
        results: list[MathResult | None] = [None] * len(pairs)
        workers = self._checkout(len(pairs))
        todo = list(range(len(pairs)))
        todo.reverse()
        send_failures = [0] * len(pairs)
        busy: dict[int, tuple[_Worker, int, float]] = {}  # fd -> (worker, index, deadline)
        idle = workers
        sel = selectors.DefaultSelector()
        try:
            while todo or busy:
                while todo and idle:
                    w = self._wait_ready(idle.pop())
                    i = todo.pop()
                    pred, gold = pairs[i]
                    if not w.send({"pred": pred, "gold": gold, "timeout": timeout_s}):
                        # died before it saw the request (killed while idle):
                        # not this item's doing, so it gets another worker
                        idle.append(self._replace(w))
                        send_failures[i] += 1
                        if send_failures[i] < 3:
                            todo.append(i)
                        else:
                            results[i] = MathResult(False, "killed", "workers keep dying")
                        continue
                    busy[w.fd] = (w, i, time.monotonic() + timeout_s + KILL_GRACE_S)
                    sel.register(w.fd, selectors.EVENT_READ)
                if not busy:
                    continue
                next_deadline = min(d for _, _, d in busy.values())
                events = sel.select(timeout=max(0.0, next_deadline - time.monotonic()))
                for key, _ in events:
                    w, i, _d = busy[key.fd]
                    lines = w.lines()
                    if lines is None:  # died: memory cap, or killed from outside
                        sel.unregister(w.fd)
                        del busy[key.fd]
                        results[i] = MathResult(False, "killed", "worker died")
                        idle.append(self._replace(w))
                    elif lines:
                        sel.unregister(w.fd)
                        del busy[key.fd]
                        reply = json.loads(lines[-1])
                        if reply.get("ok"):
                            results[i] = MathResult(bool(reply["equal"]), "ok")
                        else:
                            err = str(reply.get("error", ""))
                            status = "memory" if err == "memory" else ("timeout" if "imeout" in err else "error")
                            results[i] = MathResult(False, status, err)
                        idle.append(w)
                now = time.monotonic()
                for fd, (w, i, d) in list(busy.items()):
                    if now >= d:
                        sel.unregister(fd)
                        del busy[fd]
                        results[i] = MathResult(False, "timeout", "killed at deadline")
                        idle.append(self._replace(w))
        finally:
            sel.close()
            # anything still mid-request is in an unknown state: replace it
            for w, _i, _d in busy.values():
                idle.append(self._replace(w))
            self._checkin(idle)
        return [r if r is not None else MathResult(False, "killed") for r in results]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._lock.notify_all()
        for w in idle:
            w.kill()

    def __enter__(self) -> "MathPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
