"""One learner rank. Rank 0 also runs the hub (ZeroMQ + replay buffer), the
weight broadcaster and the metrics server, takes each step's groups from the
buffer and hands every rank its share over the training group.

Started by ``python -m learner`` (learner/__main__.py), in-process for one rank
or as one subprocess per rank.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry

from common.data import load_tasks
from common.metrics import HubMetrics, LearnerMetrics, MetricsServer, WeightSyncMetrics
from common.models import encode_prompt, load_tokenizer
from common.protocol import Sampling
from common.weight_sync import WeightGroupSpec, make_manifest
from learner import checkpoint
from learner.broadcaster import Broadcaster
from learner.buffer import ReplayBuffer
from learner.config import LearnerConfig
from learner.hub import Hub, RunState
from learner.trainer import Trainer, diversity

log = logging.getLogger("learner")


class Rank0:
    """Everything only rank 0 runs: hub, buffer, broadcaster, metrics, step log."""

    def __init__(self, cfg: LearnerConfig, trainer: Trainer, tokenizer):
        import numpy as np

        self.cfg = cfg
        tasks = load_tasks(cfg.tasks, n=cfg.num_prompts, seed=cfg.task_seed)
        prompts = [np.asarray(encode_prompt(tokenizer, t.prompt), dtype=np.int32) for t in tasks]
        self.registry = CollectorRegistry()
        self.metrics = LearnerMetrics(self.registry)
        self.state = RunState()
        self.buffer = ReplayBuffer(len(tasks), capacity=cfg.buffer_capacity, groups_per_step=cfg.groups_per_step,
                                   max_staleness=cfg.max_staleness, lease_timeout_s=cfg.lease_timeout_s,
                                   epochs=cfg.epochs, seed=cfg.seed, late_wait_s=cfg.late_group_wait_s)
        spec = None
        if cfg.actors:  # the rendezvous of the elastic broadcast group (sizes vary per generation)
            spec = WeightGroupSpec(cfg.advertise_host, cfg.weight_port, 1, 0, cfg.weight_backend,
                                   cfg.broadcast_timeout_s)
        weights = trainer.module.policy_weights()
        s = cfg.sampling
        self.hub = Hub(bind=cfg.bind, buffer=self.buffer, prompts=prompts, kinds=[t.kind for t in tasks],
                       references=[t.reference for t in tasks], sampling=Sampling(s.n, s.temperature, s.top_p, s.max_tokens),
                       state=self.state, metrics=HubMetrics(self.registry),
                       weight_group=None if spec is None else spec.as_dict(), manifest=make_manifest(weights),
                       seats=cfg.actors, lease_timeout_s=cfg.lease_timeout_s,
                       # embedding rows, not len(tokenizer): the bound an id must respect on the GPU
                       vocab_size=trainer.module.policy.get_input_embeddings().num_embeddings,
                       max_abs_score=cfg.max_abs_score, curve_dir=cfg.curve_dir, min_actors=cfg.min_actors,
                       max_staleness=cfg.max_staleness, actor_timeout_s=cfg.actor_timeout_s)
        self.broadcaster = Broadcaster(pub_bind=cfg.pub_bind, advertise_host=cfg.advertise_host, spec=spec,
                                       device=trainer.device,
                                       state=self.state, metrics=WeightSyncMetrics(self.registry, "learner"),
                                       curve_dir=cfg.curve_dir, membership=self.hub.membership, evict=self.hub.evict)
        self.hub.metrics.expected_actors.set(cfg.actors)
        self.server = MetricsServer(self.registry, cfg.metrics_port, self._health)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self.stop_requested = False
        """Set by SIGTERM: the step in progress finishes, then the run checkpoints and stops."""
        self.step_log = None  # opened by begin(), once a resume has trimmed it
        self.log_rows = 0
        """Rows steps.jsonl holds; a checkpoint records it, and a resume trims the log back to it."""
        self.waited = 0.0
        """Seconds the last step waited for its groups (the learner idle, waiting for data)."""

    def begin(self, step: int, resumed: dict | None, snapshot) -> None:
        """Start serving actors at ``step`` (0, or the resumed checkpoint's, whose meta is
        ``resumed``; None: a fresh run)."""
        log_path = Path(self.cfg.run_dir) / "steps.jsonl"
        if resumed is None:
            log_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
        else:
            self.buffer.restore(resumed["buffer"])
            dropped = checkpoint.truncate_log(log_path, step, resumed.get("log_rows"))
            self.log_rows = sum(1 for line in log_path.read_text().splitlines() if line.strip()) \
                if log_path.is_file() else 0
            self.metrics.resumes.inc()
            self.metrics.resumed_from.set(step)
            log.info("resumed at step %d; %d step log row(s) after it dropped", step, dropped)
        self.step_log = open(log_path, "a")
        self.state.policy_version = step
        if snapshot is not None:
            self.broadcaster.submit(step, *snapshot)  # actors must hold these weights first
        self.broadcaster.start()
        self.hub.start()
        log.info("learner hub on %s, metrics on :%d, %d prompts", self.cfg.bind, self.server.port, len(self.hub.prompts))

    def _health(self) -> dict:
        return {"role": "learner", "policy_version": self.state.policy_version, "weight_seq": self.state.weights.seq}

    def next_groups(self):
        """The next step's groups; None when the epochs are exhausted, STOP on SIGTERM."""
        t0 = time.perf_counter()
        while True:
            if self.stop_requested:
                return STOP
            self.hub.check()
            self.broadcaster.check()
            groups = self.buffer.take(self.cfg.groups_per_step, self.state.policy_version, timeout_s=1.0)
            if groups is not None:
                self.waited = time.perf_counter() - t0
                self.metrics.wait_seconds.observe(self.waited)
                return groups
            if self.buffer.exhausted():
                return None

    def record(self, step: int, groups, stats: dict, seconds: float) -> None:
        m, v = self.metrics, self.state.policy_version
        nseq = sum(len(g.completions) for g in groups)
        div, d2 = diversity(groups)
        stale = [v - 1 - c.version for g in groups for c in g.completions]
        m.steps.inc()
        m.version.set(v)
        m.loss.set(stats["loss"])
        m.score.set(stats["score_mean"])
        m.log_z.set(stats.get("log_z_mean", 0.0))
        m.is_weight.set(stats.get("is_weight_mean", 1.0))
        m.clip_frac.set(stats.get("is_clip_frac", 0.0))
        m.step_seconds.observe(seconds)
        nan = float("nan")
        m.logp_abs_diff.set(nan if stats["behaviour_logp_abs_diff"] is None else stats["behaviour_logp_abs_diff"])
        m.mismatch_kl.set(nan if stats["behaviour_mismatch_kl"] is None else stats["behaviour_mismatch_kl"])
        m.grad_norm.set(stats["grad_norm"])
        m.grad_clipped.set(stats["grad_clipped"])
        m.grad_clipped_steps.inc(stats["grad_clipped"] >= 0.5)
        m.lr.set(stats["lr"])
        m.zero_variance.set(stats["zero_variance_groups"])
        # FlowRL's terms; NaN under the baselines, which have no δ or log Z
        m.delta_mean.set(stats.get("delta_mean", nan))
        m.delta_std.set(stats.get("delta_std", nan))
        m.log_z_std.set(stats.get("log_z_std", nan))
        m.reward_term_mean.set(stats.get("reward_term_mean", nan))
        m.reward_term_std.set(stats.get("reward_term_std", nan))
        m.samples.inc(nseq)
        m.tokens.inc(stats["response_tokens"])
        m.samples_per_s.set(nseq / seconds)
        m.tokens_per_s.set(stats["response_tokens"] / seconds)
        m.diversity.set(div)
        m.distinct_2.set(d2)
        for s in stale:
            m.staleness.observe(s)
        row = dict(step=step, version=v, prompt_ids=[g.prompt_id for g in groups], seconds=round(seconds, 3), samples_per_s=round(nseq / seconds, 2),
                   staleness_mean=sum(stale) / len(stale), staleness_max=max(stale),
                   wait_seconds=round(self.waited, 3), distinct_ratio=div, distinct_2=d2,
                   broadcast_seconds=round(self.broadcaster.last_seconds, 3), **stats)
        self._write(row)
        log.info("step %d v%d loss %.4f score %.3f staleness %.2f %.1f samples/s", step, v, stats["loss"],
                 stats["score_mean"], row["staleness_mean"], row["samples_per_s"])

    def _write(self, row: dict) -> None:
        self.step_log.write(json.dumps(row) + "\n")
        self.step_log.flush()
        self.log_rows += 1

    def record_skip(self, step: int, groups, stats: dict) -> None:
        """A step whose loss or gradient was not finite: its groups are spent, the policy is not."""
        self.metrics.skipped_steps.labels(stats["skipped"]).inc()
        self.buffer.step_skipped(self.state.policy_version)
        row = dict(step=step, version=self.state.policy_version, prompt_ids=[g.prompt_id for g in groups],
                   skipped=stats["skipped"], grad_norm=str(stats["grad_norm"]), loss=str(stats["loss"]))
        self._write(row)
        log.warning("step after %d skipped: non-finite %s (loss %s, gradient norm %s); weights unchanged",
                    step, stats["skipped"], stats["loss"], stats["grad_norm"])

    def close(self, finished: bool) -> None:
        """``finished``: the run is over (actors exit); else the learner is stopping or failed
        and actors wait for it to come back."""
        if finished:
            # Finish the last broadcast while the hub still serves, so actors can take it.
            self.broadcaster.finish(self.cfg.broadcast_timeout_s)
        self.state.stopping = "shutdown" if finished else "stopping"
        # The hub keeps answering for the linger: actors polling it (a restarted one too) hear
        # that the run is over, and a scraper sees the final metrics. Not after SIGTERM: the
        # pod's grace period is for the checkpoint, and what outlives it is SIGKILLed.
        until = time.monotonic() + max(1.0, self.cfg.linger_s)
        while time.monotonic() < until and not self.stop_requested:
            time.sleep(0.2)
        self.hub.stop()
        self.server.close()
        if self.step_log is not None:
            self.step_log.close()


STOP = "stop"
MAX_SKIPS_IN_A_ROW = 8
"""Optimizer steps skipped in a row (non-finite loss or gradient) before the run fails."""


def _share(groups, rank: int, world: int):
    """Rank 0's groups (or None / STOP) to every rank over the training group. Returns this
    rank's slice and its loss scale: each rank's share of the batch times the world size, so
    that DeepSpeed's mean over ranks is the mean over all sequences even for the last, partial
    batch. A rank left without a group (fewer groups than ranks) reruns one at scale 0."""
    if world > 1:
        box = [groups]
        dist.broadcast_object_list(box, src=0)
        groups = box[0]
    if groups is None or isinstance(groups, str):
        return groups, 0.0
    mine = groups[rank::world]
    if not mine:
        return groups[:1], 0.0
    return mine, len(mine) * world / len(groups)


def _start(cfg: LearnerConfig, trainer: Trainer, r0: "Rank0 | None") -> int:
    """Resume (every rank) or start fresh; returns the step to continue from."""
    path = checkpoint.resolve(cfg.run_dir, cfg.resume)
    if path is None:
        if r0 is not None and cfg.resume == "never":
            shutil.rmtree(checkpoint.checkpoints_dir(cfg.run_dir), ignore_errors=True)  # "never": start over
        step, meta = 0, None
    else:
        meta = checkpoint.load(trainer.engine, path)
        checkpoint.restore_rng(meta)
        step = meta["step"]
        log.info("resuming from %s (step %d)", path, step)
    if r0 is not None:
        snapshot = trainer.snapshot() if cfg.actors else None
        r0.begin(step, meta, snapshot)
    return step


def _checkpoint(cfg: LearnerConfig, trainer: Trainer, r0: "Rank0 | None", step: int, finished: bool) -> None:
    meta = {"model": cfg.model, "finished": finished,
            "buffer": r0.buffer.state() if r0 is not None else None,
            "log_rows": r0.log_rows if r0 is not None else None}
    path = checkpoint.save(trainer.engine, cfg.run_dir, step, meta, trainer.rank, cfg.keep_checkpoints)
    log.info("checkpoint %s written", path)


def _install_sigterm(r0: "Rank0 | None") -> None:
    """SIGTERM finishes the step in progress and checkpoints (rank 0 decides for all); the
    process then exits common.exitcodes.TERMINATED, unless the run was already over."""
    def handler(signum, frame):
        log.warning("SIGTERM: stopping after this step")
        if r0 is not None:
            r0.stop_requested = True
    signal.signal(signal.SIGTERM, handler)


def run(cfg: LearnerConfig, rank: int, world: int) -> bool:
    """Train until the run is over (True) or SIGTERM stopped it (False)."""
    import deepspeed

    cfg.validate(world)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    tokenizer = load_tokenizer(cfg.model)
    trainer = Trainer(cfg, rank, world, device, tokenizer.pad_token_id)
    r0 = Rank0(cfg, trainer, tokenizer) if rank == 0 else None
    _install_sigterm(r0)
    finished, skips = False, 0
    try:
        step = _start(cfg, trainer, r0)
        while True:
            if cfg.max_steps and step >= cfg.max_steps:
                every = None
            else:
                every = r0.next_groups() if r0 else None  # the step's groups, all ranks' shares
            groups, scale = _share(every, rank, world)
            if groups is None or isinstance(groups, str):
                finished = groups is None
                break
            t0 = time.perf_counter()
            stats = trainer.step(groups, version=step, scale=scale)
            if stats["skipped"]:  # the weights did not change: no new version, nothing to broadcast
                skips += 1
                if r0:
                    r0.record_skip(step, every, stats)
                if skips >= MAX_SKIPS_IN_A_ROW:
                    raise RuntimeError(f"{skips} optimizer steps in a row had a non-finite {stats['skipped']} "
                                       f"(last at step {step}): the run diverged; lower the learning rate")
                continue
            skips = 0
            step += 1
            if r0:
                # 0.5 GB copied per step for the embedded model: only worth it when actors take weights
                snapshot = trainer.snapshot() if cfg.actors else ([], None)
                r0.state.policy_version = step
                r0.broadcaster.submit(step, *snapshot)
                r0.record(step, every, stats, time.perf_counter() - t0)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _checkpoint(cfg, trainer, r0, step, finished=False)
        _checkpoint(cfg, trainer, r0, step, finished=finished)
        if finished:
            trainer.save(f"{cfg.run_dir}/checkpoint-final", tokenizer, {"step": step, "model": cfg.model})
    finally:
        if r0:
            r0.close(finished)
        # Tear the training group down before the interpreter exits: a process group's
        # threads still alive at exit abort the process ("terminate called without an
        # active exception"), which failed a rank now and then.
        dist.destroy_process_group()
    log.info("learner rank %d %s after %d steps", rank, "finished" if finished else "stopped", step)
    return finished
