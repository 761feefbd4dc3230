"""Prometheus metric definitions for every role (DESIGN.md section 6) and the
small HTTP server that exposes /metrics and /health on each process's port.

Each process builds one ``CollectorRegistry`` and the metric groups it needs;
names start with ``flowrl_<role>_``, counters end in ``_total``, durations are
histograms in seconds.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16)


class LearnerMetrics:
    def __init__(self, r: CollectorRegistry):
        self.steps = Counter("flowrl_learner_steps_total", "Optimizer steps taken", registry=r)
        self.version = Gauge("flowrl_learner_policy_version", "Current policy version", registry=r)
        self.loss = Gauge("flowrl_learner_loss", "Loss of the last step", registry=r)
        self.log_z = Gauge("flowrl_learner_log_z_mean", "Mean log Z(x) of the last batch", registry=r)
        self.score = Gauge("flowrl_learner_score_mean", "Mean raw score of the last batch", registry=r)
        self.is_weight = Gauge("flowrl_learner_is_weight_mean", "Mean clipped importance weight", registry=r)
        self.clip_frac = Gauge("flowrl_learner_is_clip_fraction", "Fraction of sequences whose weight was clipped", registry=r)
        self.staleness = Histogram("flowrl_learner_staleness_versions", "Policy versions between generation and training",
                                   buckets=_STALENESS_BUCKETS, registry=r)
        self.step_seconds = Histogram("flowrl_learner_step_duration_seconds", "Wall time of one training step",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.samples = Counter("flowrl_learner_samples_total", "Completions trained on", registry=r)
        self.tokens = Counter("flowrl_learner_tokens_total", "Response tokens trained on", registry=r)
        self.samples_per_s = Gauge("flowrl_learner_samples_per_second", "Completions per second over the last step", registry=r)
        self.tokens_per_s = Gauge("flowrl_learner_tokens_per_second", "Response tokens per second over the last step", registry=r)
        self.diversity = Gauge("flowrl_learner_distinct_answers_ratio", "Distinct completions per group / n, batch mean", registry=r)
        self.distinct_2 = Gauge("flowrl_learner_distinct_2", "Distinct bigrams / bigrams within groups, batch mean", registry=r)
        self.wait_seconds = Histogram("flowrl_learner_batch_wait_seconds", "Time waiting for the buffer to fill a batch",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.skipped_steps = Counter("flowrl_learner_skipped_steps_total",
                                     "Optimizer steps skipped because the loss (loss) or the gradient (grad) was "
                                     "not finite; their weights were never broadcast", ["reason"], registry=r)
        self.resumes = Counter("flowrl_learner_resumes_total", "Times this process resumed from a checkpoint",
                               registry=r)
        self.resumed_from = Gauge("flowrl_learner_resumed_from_step", "Step of the checkpoint resumed from (0: fresh)",
                                  registry=r)
        self.logp_abs_diff = Gauge("flowrl_learner_behaviour_logp_abs_diff",
                                   "Mean |log p engine - log p learner| per token, over the last step's samples "
                                   "generated with the learner's current weights (NaN when there were none)", registry=r)
        self.mismatch_kl = Gauge("flowrl_learner_behaviour_mismatch_kl",
                                 "k3 estimate of KL(behaviour || learner) per token over the same samples", registry=r)
        # Why a step did or did not move the policy (issue 12): the gradient before the clip,
        # the step size, FlowRL's balance terms and the groups that carry no signal.
        self.grad_norm = Gauge("flowrl_learner_grad_norm", "Global gradient 2-norm of the last step, before clipping",
                               registry=r)
        self.grad_clipped = Gauge("flowrl_learner_grad_clipped",
                                  "1 when the last step's gradient norm was above grad_clip (and was scaled down)",
                                  registry=r)
        self.grad_clipped_steps = Counter("flowrl_learner_grad_clipped_steps_total",
                                          "Steps whose gradient was scaled down by the clip", registry=r)
        self.lr = Gauge("flowrl_learner_learning_rate", "Learning rate of the policy's parameter group", registry=r)
        self.delta_mean = Gauge("flowrl_learner_delta_mean", "FlowRL: mean of delta over the last batch", registry=r)
        self.delta_std = Gauge("flowrl_learner_delta_std", "FlowRL: standard deviation of delta", registry=r)
        self.log_z_std = Gauge("flowrl_learner_log_z_std", "FlowRL: standard deviation of log Z(x)", registry=r)
        self.reward_term_mean = Gauge("flowrl_learner_reward_term_mean", "FlowRL: mean of beta * normalised reward",
                                      registry=r)
        self.reward_term_std = Gauge("flowrl_learner_reward_term_std",
                                     "FlowRL: standard deviation of beta * normalised reward", registry=r)
        self.zero_variance = Gauge("flowrl_learner_zero_variance_group_fraction",
                                   "Fraction of the last step's groups whose scores were all equal (no signal)",
                                   registry=r)


class HubMetrics:
    def __init__(self, r: CollectorRegistry):
        self.actors = Gauge("flowrl_hub_connected_actors", "Actors heard from within the heartbeat timeout", registry=r)
        self.members = Gauge("flowrl_hub_members", "Actors holding a seat in the run (weight group members)", registry=r)
        self.joins = Counter("flowrl_hub_joins_total", "Actors that took a seat (new or restarted)", registry=r)
        self.evictions = Counter("flowrl_hub_evictions_total", "Actors removed from the run", ["reason"], registry=r)
        self.leaves = Counter("flowrl_hub_leaves_total", "Actors that left on their own (SIGTERM)", registry=r)
        self.released = Counter("flowrl_hub_prompts_released_total",
                                "Leased prompts handed back early (evicted or leaving actor, scorer failure, "
                                "a refused group)", registry=r)
        self.given_up = Counter("flowrl_hub_prompts_given_up_total",
                                "Prompts not trained this epoch: their group was refused 3 times", registry=r)
        self.expected_actors = Gauge("flowrl_hub_expected_actors",
                                     "Actors the run is sized for (learner config actors); alerts compare", registry=r)
        self.leases = Gauge("flowrl_hub_leases_outstanding", "Prompts leased and not yet returned", registry=r)
        self.buffer = Gauge("flowrl_hub_buffer_groups", "Complete prompt groups in the replay buffer", registry=r)
        self.rejected = Counter("flowrl_hub_rejected_messages_total", "Messages dropped", ["reason"], registry=r)
        self.received = Counter("flowrl_hub_groups_received_total", "Trajectory groups accepted", registry=r)
        self.expired = Counter("flowrl_hub_leases_expired_total", "Prompts re-queued after their lease deadline", registry=r)
        self.stale = Counter("flowrl_hub_groups_dropped_stale_total", "Groups dropped (and re-queued) for staleness", registry=r)


class ActorMetrics:
    def __init__(self, r: CollectorRegistry):
        self.version = Gauge("flowrl_actor_policy_version", "Policy version the actor's weights hold", registry=r)
        self.tokens = Counter("flowrl_actor_generated_tokens_total", "Completion tokens generated", registry=r)
        self.tokens_per_s = Gauge("flowrl_actor_generated_tokens_per_second", "Tokens/s of the last batch", registry=r)
        self.sent = Counter("flowrl_actor_trajectories_sent_total", "Trajectory groups sent", registry=r)
        self.rejected = Counter("flowrl_actor_trajectories_rejected_total", "Groups the hub refused", ["reason"], registry=r)
        self.generate_seconds = Histogram("flowrl_actor_generate_duration_seconds", "Wall time of one generation batch",
                                          buckets=_STEP_BUCKETS, registry=r)
        self.score_seconds = Histogram("flowrl_actor_score_duration_seconds", "Wall time scoring one batch",
                                       buckets=_STEP_BUCKETS, registry=r)
        self.score = Gauge("flowrl_actor_score_mean", "Mean score of the last batch", registry=r)
        self.reconnects = Counter("flowrl_actor_reconnects_total",
                                  "Times the learner was lost (dead, restarted, stopping) and hello was said again",
                                  registry=r)
        self.score_failures = Counter("flowrl_actor_score_failures_total", "Scoring attempts that failed", registry=r)
        self.idle = Counter("flowrl_actor_idle_seconds_total",
                            "Time the engine was not generating, by what the actor waited for: no_work (nothing "
                            "leasable), weights (receiving a broadcast), scoring (the previous batch was still being "
                            "scored and sent when this one finished)", ["reason"], registry=r)
        for reason in ("no_work", "weights", "scoring"):  # every series exists from the start, at 0
            self.idle.labels(reason)


class WeightSyncMetrics:
    def __init__(self, r: CollectorRegistry, role: str):
        self.seconds = Histogram("flowrl_weightsync_duration_seconds", "Wall time of one weight broadcast",
                                 ["role"], buckets=_STEP_BUCKETS, registry=r).labels(role)
        self.bytes = Counter("flowrl_weightsync_bytes_total", "Bytes broadcast or received", ["role"], registry=r).labels(role)
        self.count = Counter("flowrl_weightsync_broadcasts_total", "Weight broadcasts completed", ["role"], registry=r).labels(role)
        self.generations = Counter("flowrl_weightsync_generations_total",
                                   "Times the broadcast group was formed anew (membership changed)", ["role"],
                                   registry=r).labels(role)


class MetricsServer:
    """Serves /metrics (Prometheus text) and /health (JSON from ``health()``)."""

    def __init__(self, registry: CollectorRegistry, port: int, health: Callable[[], dict], host: str = "0.0.0.0"):
        registry_, health_ = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/metrics"):
                    body, ctype = generate_latest(registry_), CONTENT_TYPE_LATEST
                elif self.path.startswith("/health"):
                    body, ctype = json.dumps(health_()).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep scrapes out of the logs
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_prometheus_text(text: str) -> dict[str, float]:
    """{'name{labels}': value} from the text format; used by tests, the demo and benches."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
