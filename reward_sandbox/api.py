"""Module-level API over a shared default Runner: run_code, run_many, isolation.

The default Runner is created on first use (probing the isolation tier then)
and closed at interpreter exit. Code that wants its own pool size or tier
builds a Runner (runner.py) and passes it explicitly.
"""

from __future__ import annotations

import atexit
import os
import threading

from .runner import ExecResult, Runner, RunnerConfig
from .tiers import Isolation

_default: Runner | None = None
_lock = threading.Lock()


def default_runner() -> Runner:
    global _default
    with _lock:
        if _default is None:
            tier = os.environ.get("FLOWRL_SANDBOX_TIER", "auto")
            _default = Runner(RunnerConfig(tier=tier))
            atexit.register(close_default_runner)
        return _default


def close_default_runner() -> None:
    global _default
    with _lock:
        if _default is not None:
            _default.close()
            _default = None


def run_code(source: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> ExecResult:
    """Run one program in the sandbox. status "ok" = ran to completion with exit code 0."""
    return default_runner().run_code(source, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)


def run_many(sources, **limits) -> list[ExecResult]:
    """run_code over many programs through the pool; results in input order.

    limits: stdin, timeout_s, memory_mb, max_output_bytes, file_size_mb, max_procs.
    """
    return default_runner().run_many(list(sources), **limits)


def isolation() -> Isolation:
    """The isolation tier in force (str() gives its name: bwrap, landlock, rlimit)."""
    return default_runner().isolation
