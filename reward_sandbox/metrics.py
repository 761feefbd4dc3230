"""Prometheus metrics of the reward sandbox (DESIGN.md section 6).

    flowrl_sandbox_runs_total{status,tier}        code runs by outcome
    flowrl_sandbox_run_duration_seconds{tier}     wall time of one run
    flowrl_sandbox_queue_depth                    jobs submitted, not yet started
    flowrl_sandbox_isolation_tier{tier}           1 for the tier in force
    flowrl_sandbox_math_verifications_total{status}
    flowrl_sandbox_math_duration_seconds          wall time of one verify batch
    flowrl_sandbox_requests_total{kind}           service requests answered
    flowrl_sandbox_rejected_requests_total{reason}
    flowrl_sandbox_request_duration_seconds{kind} service latency per request

Built on a registry passed in; the service serves it with
common.metrics.MetricsServer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TIERS = ("bwrap", "landlock", "rlimit")


class SandboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.runs = Counter("flowrl_sandbox_runs_total", "Sandboxed code runs by status and isolation tier",
                            ["status", "tier"], registry=r)
        self.run_seconds = Histogram("flowrl_sandbox_run_duration_seconds", "Wall time of one sandboxed run",
                                     ["tier"], buckets=_RUN_BUCKETS, registry=r)
        self.queue_depth = Gauge("flowrl_sandbox_queue_depth", "Sandbox jobs submitted and not yet started", registry=r)
        self.tier = Gauge("flowrl_sandbox_isolation_tier", "1 for the isolation tier in force", ["tier"], registry=r)
        self.math = Counter("flowrl_sandbox_math_verifications_total", "Math verifications by status",
                            ["status"], registry=r)
        self.math_seconds = Histogram("flowrl_sandbox_math_duration_seconds", "Wall time of one math verification batch",
                                      buckets=_RUN_BUCKETS, registry=r)
        self.requests = Counter("flowrl_sandbox_requests_total", "Scoring requests answered", ["kind"], registry=r)
        self.rejected = Counter("flowrl_sandbox_rejected_requests_total", "Scoring requests refused", ["reason"], registry=r)
        self.request_seconds = Histogram("flowrl_sandbox_request_duration_seconds", "Service latency of one request",
                                         ["kind"], buckets=_RUN_BUCKETS, registry=r)

    def set_tier(self, tier: str) -> None:
        for t in _TIERS:
            self.tier.labels(t).set(1.0 if t == tier else 0.0)

    def observe(self, status: str, tier: str, duration_s: float) -> None:
        self.runs.labels(status, tier).inc()
        self.run_seconds.labels(tier).observe(duration_s)
