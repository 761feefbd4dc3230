"""One actor process: lease prompts from the learner's hub, generate n samples
per prompt, score them, send each group back, and take new weights from the
learner's broadcast between generation batches.

Streaming: the next batch generates (in a worker thread) while the previous
one is scored and sent, group by group as each is scored. Groups go out
without waiting for their acks, up to ``send_window`` unacked; the hub answers
in order, so every later request collects the acks before its own reply.
Weights change only between generations, when none is running, and each batch
is tagged with the version of the weights it was generated with.

It outlives the learner. A learner that stops answering (heartbeats every
idle moment, a reply timeout of ``reply_timeout_s``), restarts, or says it is
stopping is waited for with backoff; the actor then says hello again and
carries on. Only the learner's "the run is over" ends it (exit 0), or SIGTERM
(hands its leases back, exit 0). A scorer failure is retried, then the batch's
prompts are handed back; the actor lives on.

Started by ``python -m actors`` (actors/__main__.py), one process per actor.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from concurrent import futures
from dataclasses import dataclass

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from actors.config import ActorConfig
from actors.engine import build_engine
from actors.weights import StoreLost, WeightFollower
from common import transport
from common.keys import ClientKeys, load_client
from common.metrics import ActorMetrics, MetricsServer, WeightSyncMetrics
from common.models import load_tokenizer
from common.protocol import (Ack, Completion, Error, Heartbeat, Hello, Release, Trajectories, VersionAnnounce, Welcome,
                             WeightRef, Work, WorkRequest)

log = logging.getLogger("actors")

SCORE_TRIES = 3
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Generated:
    """A batch generated and not yet scored and sent."""

    work: Work
    held: WeightRef
    """The weights it was generated with (its completions carry held.version)."""
    groups: list
    """Per prompt, the engine's samples."""
    texts: list[list[str]]
    """Per prompt, the decoded completions (what the scorer reads)."""
    gen_s: float
    done_at: float
    """time.monotonic() when the generation ended."""


class LearnerGone(Exception):
    """The learner stopped answering or was never reachable; the message is one line."""


class Shutdown(Exception):
    """The learner said the run is over."""


class Terminated(Exception):
    """SIGTERM: hand the leases back and stop."""


def _make_scorer(cfg: ActorConfig, curve: ClientKeys | None):
    if cfg.reward_endpoint:
        from reward_sandbox.client import RemoteScorer
        return RemoteScorer(cfg.reward_endpoint, timeout_s=cfg.reply_timeout_s, curve=curve)
    from reward_sandbox import LocalScorer
    return LocalScorer()


class Actor:
    def __init__(self, cfg: ActorConfig, index: int):
        self.cfg, self.index = cfg, index
        # unique per process start: a restarted actor is a new member, never mistaken for the old one
        self.actor_id = f"{socket.gethostname()}-{os.getpid()}-{index}-{uuid.uuid4().hex[:6]}"
        self.registry = CollectorRegistry()
        self.metrics = ActorMetrics(self.registry)
        self.weights: WeightFollower | None = None
        """Set once the engine is built; /health says "loading" until then."""
        port = cfg.metrics_port + index if cfg.metrics_port else 0
        # first: /metrics and /health answer while the engine loads (minutes for vLLM on a GPU)
        self.server = MetricsServer(self.registry, port, self._health)
        self.ctx = zmq.Context()
        self.curve = load_client(cfg.curve_dir) if cfg.curve_dir else None
        self.sock = self.sub = None
        self.sessions = 0
        self.unacked: set[tuple[int, int]] = set()  # (lease id, prompt id) sent in this session, not acked
        # one generation at a time, beside the thread that scores, sends and syncs weights
        self.pool = futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        device = f"cuda:{index}" if cfg.device == "cuda" else cfg.device
        self.engine = build_engine(cfg, device, seed=cfg.seed + index)
        self.tokenizer = load_tokenizer(cfg.model)  # decodes completions for scoring, whatever the engine
        self.scorer = _make_scorer(cfg, self.curve)
        # A fresh engine holds the initial weights: policy version 0 of any run.
        self.weights = WeightFollower(self.engine, self.actor_id, WeightSyncMetrics(self.registry, "actor"),
                                      held=WeightRef(0, 0))
        self.pending = WeightRef(seq=0, version=0)
        """The newest broadcast the learner announced (hub replies, PUB)."""
        self.batches = 0

    @property
    def held(self) -> WeightRef:
        """The weights the engine holds; one immutable pair (work is tagged with its version)."""
        return self.weights.held

    def _health(self) -> dict:
        """Runs on the metrics server's thread, from before the engine is built."""
        weights = self.weights
        if weights is None:
            return {"role": "actor", "actor_id": self.actor_id, "state": "loading"}
        held = weights.held  # read once: version and seq of one broadcast
        return {"role": "actor", "actor_id": self.actor_id, "state": "running", "policy_version": held.version,
                "weight_seq": held.seq}

    # ------------------------------------------------------------ messaging
    def _reply(self, timeout_s: float):
        """The next message from the hub; a lost or refusing learner raises."""
        reply = transport.recv(self.sock, timeout_s)
        if reply is None:
            raise LearnerGone(f"no reply from the learner at {self.cfg.learner} within {timeout_s:.0f} s")
        if isinstance(reply, Error):
            if reply.reason == "shutdown":
                raise Shutdown()
            raise LearnerGone(f"learner: {reply.reason}: {reply.detail}")
        if hasattr(reply, "weight_seq"):
            self._note_seq(reply.weight_seq, reply.policy_version)
        return reply

    def _request(self, msg, timeout_s: float | None = None):
        """Send ``msg`` and return its reply. The hub answers in order, so the acks of every
        group sent before ``msg`` arrive first: they are taken on the way."""
        transport.send(self.sock, msg)
        while True:
            reply = self._reply(timeout_s or self.cfg.reply_timeout_s)
            if not isinstance(reply, Ack):
                return reply
            self._on_ack(reply)

    def _send_group(self, traj: Trajectories) -> None:
        """Send without waiting for the ack, as long as fewer than ``send_window`` are unacked."""
        transport.send(self.sock, traj)
        self.unacked.add((traj.lease_id, traj.prompt_id))
        while len(self.unacked) >= self.cfg.send_window:
            reply = self._reply(self.cfg.reply_timeout_s)
            if not isinstance(reply, Ack):
                raise LearnerGone(f"expected an ack, got {type(reply).__name__}")
            self._on_ack(reply)

    def _on_ack(self, ack: Ack) -> None:
        self.unacked.discard((ack.lease_id, ack.prompt_id))
        if ack.accepted:
            self.metrics.sent.inc()
        else:
            self.metrics.rejected.labels(ack.reason).inc()

    def _note_seq(self, seq: int, version: int) -> None:
        if seq > self.pending.seq:
            self.pending = WeightRef(seq, version)

    def _poll_announcements(self) -> None:
        while self.sub is not None and self.sub.poll(0):
            msg = transport.recv(self.sub, 0)
            if isinstance(msg, Error) and msg.reason == "shutdown":
                raise Shutdown()
            if isinstance(msg, VersionAnnounce):
                self._note_seq(msg.weight_seq, msg.policy_version)

    # ------------------------------------------------------------ sessions
    def run(self) -> None:
        """Serve learner sessions until the run is over; a lost learner is waited for."""
        while True:
            self.connect()
            try:
                self._serve()
            except LearnerGone as e:
                self.metrics.reconnects.inc()
                log.warning("actor %d: %s; reconnecting", self.index, e)

    def _open(self) -> None:
        """A fresh DEALER each session: nothing queued for a dead learner is sent to the next one."""
        for s in (self.sock, self.sub):
            if s is not None:
                s.close(linger=0)
        self.sub = None
        self.sessions += 1
        self.unacked = set()  # acks of an old session never come
        self.sock = transport.dealer(self.ctx, self.cfg.learner, f"{self.actor_id}/{self.sessions}", curve=self.curve)

    def connect(self) -> None:
        """Say hello until the learner answers (start order does not matter), with backoff."""
        delay, attempt = 1.0, 0
        hello = Hello(actor_id=self.actor_id, engine=self.cfg.engine, model=self.cfg.model, pid=os.getpid())
        while True:
            attempt += 1
            self._open()
            try:
                welcome = self._request(hello, self.cfg.connect_timeout_s)
                break
            except LearnerGone as e:
                log.info("actor %d: waiting for the learner at %s (attempt %d): %s", self.index, self.cfg.learner,
                         attempt, e)
            time.sleep(delay)
            delay = min(2 * delay, BACKOFF_MAX_S)
        if not isinstance(welcome, Welcome):
            raise LearnerGone(f"expected welcome, got {type(welcome).__name__}")
        self.pending = WeightRef(welcome.weight_seq, welcome.policy_version)
        self.weights.attach(welcome.weight_group, welcome.manifest, welcome.policy_version)
        self.sub = transport.subscriber(self.ctx, welcome.pub_endpoint, curve=self.curve)
        log.info("actor %d: joined run %s as %s", self.index, welcome.run_id, self.actor_id)

    def _serve(self) -> None:
        """The pipeline: batch k+1 generates (in ``self.pool``) while batch k is scored and
        sent. Weights change only here, between generations, when none is running."""
        ready: Generated | None = None  # generated, not yet scored and sent
        while True:
            self._poll_announcements()
            t0 = time.perf_counter()
            try:
                self.weights.sync()
            except StoreLost as e:
                raise LearnerGone(str(e)) from e
            self.metrics.idle.labels("weights").inc(time.perf_counter() - t0)
            held = self.held
            self.metrics.version.set(held.version)
            work = self._request(WorkRequest(self.actor_id, self.cfg.prompts_per_batch, held.version))
            if not isinstance(work, Work):
                raise LearnerGone(f"expected work, got {type(work).__name__}")
            if not work.prompts:
                if ready is not None:
                    self._deliver(ready)
                    ready = None
                else:
                    self._idle(work.retry_after_s)
                continue
            future = self.pool.submit(self._generate, work, held)
            try:
                if ready is not None:
                    self._deliver(ready)
                self._wait_heard(future)
            finally:
                futures.wait([future])  # never leave (and change weights) with a generation running
            ready = future.result()
            # a generation that ended before the previous batch was out left the engine idle since
            self.metrics.idle.labels("scoring").inc(max(0.0, time.monotonic() - ready.done_at))

    def _wait_heard(self, future: futures.Future) -> None:
        """Wait for the generation, saying every ``heartbeat_s`` that this actor is alive: one
        that takes longer than the hub's actor_timeout_s would get it evicted as silent."""
        while not futures.wait([future], timeout=self.cfg.heartbeat_s).done:
            held = self.held
            self._request(Heartbeat(self.actor_id, held.version, held.seq))

    def _idle(self, seconds: float) -> None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                self._poll_announcements()
                if self.pending.seq > self.held.seq:
                    break
        held = self.held
        self._request(Heartbeat(self.actor_id, held.version, held.seq))
        self.metrics.idle.labels("no_work").inc(time.perf_counter() - t0)

    # ------------------------------------------------------------ one batch
    def _generate(self, work: Work, held: WeightRef) -> Generated:
        """Runs in ``self.pool``. Generates with the weights ``held`` names (its version tags
        every completion); nothing else touches the engine meanwhile."""
        t0 = time.perf_counter()
        groups = self.engine.generate([p.tokens for p in work.prompts], work.sampling,
                                      seed=self.cfg.seed + 1000 * self.index + self.batches)
        self.batches += 1
        gen_s = time.perf_counter() - t0
        ntok = sum(len(s.tokens) for g in groups for s in g)
        self.metrics.generate_seconds.observe(gen_s)
        self.metrics.tokens.inc(ntok)
        self.metrics.tokens_per_s.set(ntok / max(gen_s, 1e-9))
        texts = [[self.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in g] for g in groups]
        return Generated(work, held, groups, texts, gen_s, time.monotonic())

    def _deliver(self, batch: Generated) -> None:
        """Score each group and send it at once; acks are taken later (``_request``)."""
        t0, scores = time.perf_counter(), []
        for prompt, samples, texts in zip(batch.work.prompts, batch.groups, batch.texts):
            group_scores = self._score(prompt.kind, texts, [prompt.reference] * len(texts))
            if group_scores is None:  # the scorer kept failing: the lease's unsent prompts go back now
                self._request(Release(self.actor_id, [batch.work.lease_id], False))
                return
            scores += group_scores
            comps = [Completion(s.tokens, s.logprobs, s.finish_reason, sc, batch.held.version)
                     for s, sc in zip(samples, group_scores)]
            self._send_group(Trajectories(batch.work.lease_id, self.actor_id, prompt.prompt_id, prompt.tokens,
                                          comps, {"generate": batch.gen_s, "score": time.perf_counter() - t0}))
        self.metrics.score_seconds.observe(time.perf_counter() - t0)
        self.metrics.score.set(float(np.mean(scores)))

    def _score(self, kind: str, texts: list, refs: list) -> list[float] | None:
        """Scores, retried on a scorer failure; None when every try failed."""
        from reward_sandbox.client import RemoteScoringError

        for attempt in range(1, SCORE_TRIES + 1):
            try:
                return self.scorer.score(kind, texts, refs)
            except (TimeoutError, RemoteScoringError) as e:
                self.metrics.score_failures.inc()
                log.warning("actor %d: scoring failed (try %d of %d): %s", self.index, attempt, SCORE_TRIES, e)
                if attempt < SCORE_TRIES:
                    time.sleep(min(2.0 ** (attempt - 1), BACKOFF_MAX_S))
        return None

    def leave(self) -> None:
        """Hand every lease back and give up the seat (SIGTERM); a learner that does not
        answer in time re-queues them at their deadline anyway."""
        if self.sock is None:
            return
        try:
            self._request(Release(self.actor_id, [], True), timeout_s=5.0)
        except (LearnerGone, Shutdown):
            pass  # nothing to hand back to: the learner is gone or the run is over

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # a generation still running (SIGTERM) ends before the engine does
        self.weights.leave()
        self.engine.close()
        self.scorer.close()
        self.server.close()
        self.ctx.destroy(linger=0)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its launcher dies, even by kill -9, so no orphan
    actor keeps a seat and a GPU."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _on_sigterm(signum, frame):
    raise Terminated()


def run_process(cfg: ActorConfig, index: int) -> None:
    """Entry of one spawned actor process: exits 0 when the run is over or on SIGTERM,
    2 with one line on a known failure (bad model)."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s actor{index} %(levelname)s %(message)s")
    import torch

    from common.models import ModelLoadError

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    actor = None
    try:
        actor = Actor(cfg, index)
        actor.run()
    except Shutdown:
        # one write, so that lines of actors sharing a log file never interleave
        sys.stdout.write(f"actor {index}: learner finished; exiting at policy version {actor.held.version}\n")
        sys.stdout.flush()
    except Terminated:
        if actor is not None:
            actor.leave()
        sys.stdout.write(f"actor {index}: SIGTERM; leases handed back, exiting\n")
        sys.stdout.flush()
    except ModelLoadError as e:
        print(f"actor {index}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if actor is not None:
            actor.close()
