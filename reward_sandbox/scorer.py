"""LocalScorer: score a batch of completions in this process's sandbox pools.

The actors call ``score(kind, completions, references)``; RemoteScorer
(client.py) has the same interface and sends the batch to a sandbox service,
which uses ``score_items`` here to do the work.

- kind "math": references are ground-truth answers; scores are 1.0 / 0.0.
- kind "code": references are JSON test specs (code_reward.parse_tests);
  scores are the fraction of tests passed.
- kind "choice": references are JSON lists of accepted integers (choice.py);
  pure string work, scored in this process.
- kind "exec" (service and tests): completions are programs, references their
  stdin; score 1.0 when the run's status is "ok".

Pools start on first use: a scorer that only ever sees math starts no code
sandbox, and the other way round.
"""

from __future__ import annotations

import os
import threading
import time

from .choice import choice_rewards
from .code_reward import code_results
from .math_pool import MathPool, MathPoolConfig
from .math_reward import math_results
from .runner import Job, Limits, Runner, RunnerConfig

KINDS = ("math", "code", "choice", "exec")


class LocalScorer:
    def __init__(
        self,
        *,
        math_workers: int = 2,
        code_workers: int | None = None,
        math_timeout_s: float = 3.0,
        code_timeout_s: float = 5.0,
        memory_mb: int = 512,
        tier: str = "auto",
        metrics=None,
    ) -> None:
        Limits(timeout_s=code_timeout_s, memory_mb=memory_mb)  # validate early, by field name
        if not (isinstance(math_timeout_s, (int, float)) and math_timeout_s > 0):
            raise ValueError(f"LocalScorer.math_timeout_s must be > 0, got {math_timeout_s!r}")
        self.math_timeout_s = math_timeout_s
        self.code_timeout_s = code_timeout_s
        self.memory_mb = memory_mb
        self.metrics = metrics
        self._math_cfg = MathPoolConfig(workers=math_workers)
        # Several actors share a node: by default each takes a few sandbox slots, not one per CPU.
        if code_workers is None:
            code_workers = max(1, min(4, os.cpu_count() or 1))
        self._runner_cfg = RunnerConfig(workers=code_workers, tier=tier)
        self._math: MathPool | None = None
        self._code: Runner | None = None
        self._lock = threading.Lock()

    def math_pool(self) -> MathPool:
        with self._lock:
            if self._math is None:
                self._math = MathPool(self._math_cfg)
            return self._math

    def runner(self) -> Runner:
        with self._lock:
            if self._code is None:
                self._code = Runner(self._runner_cfg, metrics=self.metrics)
            return self._code

    def score(self, kind: str, completions: list[str], references: list[str]) -> list[float]:
        return self.score_items(kind, completions, references)[0]

    def score_items(
        self,
        kind: str,
        completions: list[str],
        references: list[str],
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
    ) -> tuple[list[float], list[str]]:
        """(scores, per-item statuses); limits default to the scorer's own."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        memory_mb = self.memory_mb if memory_mb is None else memory_mb
        if kind == "choice":  # many accepted integers (choice.py): string work, no pool needed
            return choice_rewards(completions, references), ["ok"] * len(completions)
        if kind == "math":
            t0 = time.monotonic()
            rs = math_results(completions, references, timeout_s=timeout_s or self.math_timeout_s, pool=self.math_pool())
            if self.metrics is not None:
                self.metrics.math_seconds.observe(time.monotonic() - t0)
                for r in rs:
                    self.metrics.math.labels(r.status).inc()
            return [1.0 if r.equal else 0.0 for r in rs], [r.status for r in rs]
        timeout_s = timeout_s or self.code_timeout_s
        if kind == "code":
            rs = code_results(completions, references, timeout_s=timeout_s, memory_mb=memory_mb, runner=self.runner())
            return [r.score for r in rs], [r.status for r in rs]
        limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)
        jobs = [Job(src, (stdin,), limits=limits) for src, stdin in zip(completions, references)]
        runs = [j.runs[0] for j in self.runner().run_jobs(jobs)]
        return [1.0 if r.status == "ok" else 0.0 for r in runs], [r.status for r in runs]

    def close(self) -> None:
        with self._lock:
            if self._math is not None:
                self._math.close()
                self._math = None
            if self._code is not None:
                self._code.close()
                self._code = None

    def __enter__(self) -> "LocalScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
