"""One actor process: lease prompts from the learner's hub, generate n samples
per prompt, score them, send each group back, and take new weights from the
learner's broadcast between generation batches.

Started by ``python -m actors`` (actors/__main__.py), one process per actor.
"""
from __future__ import annotations

import logging
import sys
import os
import socket
import time

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from actors.config import ActorConfig
from actors.engine import build_engine
from common import transport
from common.keys import ClientKeys, load_client
from common.metrics import ActorMetrics, MetricsServer, WeightSyncMetrics
from common.models import load_tokenizer
from common.protocol import (Completion, Error, Heartbeat, Hello, Trajectories, VersionAnnounce, Welcome, WeightRef,
                             Work, WorkRequest)
from common.weight_sync import WeightGroupSpec

log = logging.getLogger("actors")


class LearnerGone(Exception):
    """The learner stopped answering or was never reachable; the message is one line."""


class Shutdown(Exception):
    """The learner said the run is over."""


def _make_scorer(cfg: ActorConfig, curve: ClientKeys | None):
    if cfg.reward_endpoint:
        from reward_sandbox.client import RemoteScorer
        return RemoteScorer(cfg.reward_endpoint, timeout_s=cfg.reply_timeout_s, curve=curve)
    from reward_sandbox import LocalScorer
    return LocalScorer()


class Actor:
    def __init__(self, cfg: ActorConfig, index: int):
        self.cfg, self.index = cfg, index
        self.actor_id = f"{socket.gethostname()}-{os.getpid()}-{index}"
        self.registry = CollectorRegistry()
        self.metrics = ActorMetrics(self.registry)
        self.sync_metrics = WeightSyncMetrics(self.registry, "actor")
        # Each pair is one immutable value, replaced whole: the metrics thread (_health) and the
        # tagging of work never see a seq from one broadcast with the version of another.
        self.held = WeightRef(seq=0, version=0)
        """The broadcast whose weights the engine holds, and its policy version (what work is tagged with)."""
        self.pending = WeightRef(seq=0, version=0)
        """The newest broadcast the learner announced."""
        port = cfg.metrics_port + index if cfg.metrics_port else 0
        self.server = MetricsServer(self.registry, port, self._health)
        self.ctx = zmq.Context()
        self.curve = load_client(cfg.curve_dir) if cfg.curve_dir else None
        self.sock = transport.dealer(self.ctx, cfg.learner, self.actor_id, curve=self.curve)
        device = f"cuda:{index}" if cfg.device == "cuda" else cfg.device
        self.engine = build_engine(cfg, device, seed=cfg.seed + index)
        self.tokenizer = load_tokenizer(cfg.model)  # decodes completions for scoring, whatever the engine
        self.scorer = _make_scorer(cfg, self.curve)
        self.sub = None
        self.batches = 0

    def _health(self) -> dict:
        held = self.held  # read once (this runs on the metrics server's thread)
        return {"role": "actor", "actor_id": self.actor_id, "policy_version": held.version, "weight_seq": held.seq}

    # ------------------------------------------------------------ messaging
    def _request(self, msg, timeout_s: float | None = None):
        transport.send(self.sock, msg)
        reply = transport.recv(self.sock, timeout_s or self.cfg.reply_timeout_s)
        if reply is None:
            raise LearnerGone(f"no reply from learner at {self.cfg.learner} within "
                              f"{timeout_s or self.cfg.reply_timeout_s:.0f} s")
        if isinstance(reply, Error):
            if reply.reason == "shutdown":
                raise Shutdown()
            raise LearnerGone(f"learner refused: {reply.reason}: {reply.detail}")
        if hasattr(reply, "weight_seq"):
            self._note_seq(reply.weight_seq, reply.policy_version)
        return reply

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

    def _catch_up_weights(self) -> None:
        # The learner starts broadcast k+1 only after every member finished k, so we
        # are at most one behind; the loop is for clarity, it runs at most once.
        while self.held.seq < self.pending.seq:
            t0 = time.perf_counter()
            nbytes = self.engine.receive_weights()
            self.sync_metrics.seconds.observe(time.perf_counter() - t0)
            self.sync_metrics.bytes.inc(nbytes)
            self.sync_metrics.count.inc()
            self.held = held = WeightRef(self.held.seq + 1, self.pending.version)
            self.metrics.version.set(held.version)
            log.info("actor %d: weights of policy version %d received (%.2fs)", self.index, held.version,
                     time.perf_counter() - t0)

    # ------------------------------------------------------------ main loop
    def connect(self) -> None:
        hello = Hello(actor_id=self.actor_id, engine=self.cfg.engine, model=self.cfg.model, pid=os.getpid())
        welcome = self._request(hello, self.cfg.connect_timeout_s)
        if not isinstance(welcome, Welcome):
            raise LearnerGone(f"expected welcome, got {type(welcome).__name__}")
        self.held = self.pending = WeightRef(welcome.weight_seq, welcome.policy_version)
        self.metrics.version.set(welcome.policy_version)
        self.sub = transport.subscriber(self.ctx, welcome.pub_endpoint, curve=self.curve)
        if welcome.weight_group is not None:
            self.engine.join_weight_group(WeightGroupSpec(**welcome.weight_group), welcome.manifest)
        else:
            log.warning("actor %d: the learner's broadcast group is full; this actor keeps its weights", self.index)

    def run(self) -> None:
        self.connect()
        while True:
            self._poll_announcements()
            self._catch_up_weights()
            work = self._request(WorkRequest(self.actor_id, self.cfg.prompts_per_batch, self.held.version))
            if not isinstance(work, Work):
                raise LearnerGone(f"expected work, got {type(work).__name__}")
            if not work.prompts:
                self._idle(work.retry_after_s)
                continue
            self._catch_up_weights()  # the lease reply may say a broadcast has started
            self._do(work)

    def _idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                self._poll_announcements()
                if self.pending.seq > self.held.seq:
                    return
        held = self.held
        self._request(Heartbeat(self.actor_id, held.version, held.seq))

    def _do(self, work: Work) -> None:
        held = self.held  # the weights this batch is generated with: its completions carry this version
        t0 = time.perf_counter()
        groups = self.engine.generate([p.tokens for p in work.prompts], work.sampling,
                                      seed=self.cfg.seed + 1000 * self.index + self.batches)
        self.batches += 1
        gen_s = time.perf_counter() - t0
        ntok = sum(len(s.tokens) for g in groups for s in g)
        self.metrics.generate_seconds.observe(gen_s)
        self.metrics.tokens.inc(ntok)
        self.metrics.tokens_per_s.set(ntok / max(gen_s, 1e-9))
        t1 = time.perf_counter()
        texts = [self.tokenizer.decode(s.tokens, skip_special_tokens=True) for g in groups for s in g]
        refs = [p.reference for p, g in zip(work.prompts, groups) for _ in g]
        kinds = {p.kind for p in work.prompts}
        scores = self._score(kinds, [p.kind for p, g in zip(work.prompts, groups) for _ in g], texts, refs)
        score_s = time.perf_counter() - t1
        self.metrics.score_seconds.observe(score_s)
        self.metrics.score.set(float(np.mean(scores)))
        k = 0
        for prompt, samples in zip(work.prompts, groups):
            comps = []
            for s in samples:
                comps.append(Completion(s.tokens, s.logprobs, s.finish_reason, scores[k], held.version))
                k += 1
            traj = Trajectories(work.lease_id, self.actor_id, prompt.prompt_id, prompt.tokens, comps,
                                {"generate": gen_s, "score": score_s})
            ack = self._request(traj)
            if ack.accepted:
                self.metrics.sent.inc()
            else:
                self.metrics.rejected.labels(ack.reason).inc()

    def _score(self, kinds: set, per_item_kinds: list, texts: list, refs: list) -> list[float]:
        if len(kinds) == 1:
            return self.scorer.score(kinds.pop(), texts, refs)
        return [self.scorer.score(k, [t], [r])[0] for k, t, r in zip(per_item_kinds, texts, refs)]

    def close(self) -> None:
        self.engine.close()
        self.scorer.close()
        self.server.close()
        self.ctx.destroy(linger=0)


def run_process(cfg: ActorConfig, index: int) -> None:
    """Entry of one spawned actor process; exits 0 on shutdown, 2 with one line on a known failure."""
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
    except (LearnerGone, ModelLoadError) as e:
        print(f"actor {index}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if actor is not None:
            actor.close()
