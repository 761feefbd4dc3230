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
                                   epochs=cfg.epochs, seed=cfg.seed)
        spec = None
        if cfg.actors:
            spec = WeightGroupSpec(cfg.advertise_host, cfg.weight_port, cfg.actors + 1, 0, cfg.weight_backend,
                                   cfg.broadcast_timeout_s)
        weights = trainer.module.policy_weights()
        self.broadcaster = Broadcaster(pub_bind=cfg.pub_bind, advertise_host=cfg.advertise_host, spec=spec,
                                       device=trainer.device,
                                       state=self.state, metrics=WeightSyncMetrics(self.registry, "learner"),
                                       curve_dir=cfg.curve_dir)
        s = cfg.sampling
        self.hub = Hub(bind=cfg.bind, buffer=self.buffer, prompts=prompts, kinds=[t.kind for t in tasks],
                       references=[t.reference for t in tasks], sampling=Sampling(s.n, s.temperature, s.top_p, s.max_tokens),
                       state=self.state, metrics=HubMetrics(self.registry),
                       weight_group=None if spec is None else spec.as_dict(), manifest=make_manifest(weights),
                       group_slots=cfg.actors, lease_timeout_s=cfg.lease_timeout_s,
                       # embedding rows, not len(tokenizer): the bound an id must respect on the GPU
                       vocab_size=trainer.module.policy.get_input_embeddings().num_embeddings,
                       max_abs_score=cfg.max_abs_score, curve_dir=cfg.curve_dir)
        self.hub.metrics.expected_actors.set(cfg.actors)
        self.server = MetricsServer(self.registry, cfg.metrics_port, self._health)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self.step_log = open(Path(cfg.run_dir) / "steps.jsonl", "w")
        self.broadcaster.start()
        self.hub.start()
        log.info("learner hub on %s, metrics on :%d, %d prompts", cfg.bind, self.server.port, len(tasks))

    def _health(self) -> dict:
        return {"role": "learner", "policy_version": self.state.policy_version, "weight_seq": self.state.weights.seq}

    def next_groups(self):
        """The next step's groups, or None when the epochs are exhausted."""
        t0 = time.perf_counter()
        while True:
            self.hub.check()
            self.broadcaster.check()
            groups = self.buffer.take(self.cfg.groups_per_step, self.state.policy_version, timeout_s=1.0)
            if groups is not None:
                self.metrics.wait_seconds.observe(time.perf_counter() - t0)
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
        row = dict(step=step, version=v, seconds=round(seconds, 3), samples_per_s=round(nseq / seconds, 2),
                   staleness_mean=sum(stale) / len(stale), distinct_ratio=div, distinct_2=d2,
                   broadcast_seconds=round(self.broadcaster.last_seconds, 3), **stats)
        self.step_log.write(json.dumps(row) + "\n")
        self.step_log.flush()
        log.info("step %d v%d loss %.4f score %.3f staleness %.2f %.1f samples/s", step, v, stats["loss"],
                 stats["score_mean"], row["staleness_mean"], row["samples_per_s"])

    def close(self, graceful: bool) -> None:
        # Finish the last broadcast while the hub still serves, so actors can take it; then say goodbye.
        if graceful:
            self.broadcaster.finish(self.cfg.broadcast_timeout_s)
        self.state.stopping = True
        time.sleep(1.0)  # let actors polling the hub hear "shutdown"
        self.hub.stop()
        time.sleep(self.cfg.linger_s)
        self.server.close()
        self.step_log.close()


def _share(groups, rank: int, world: int):
    """Rank 0's groups to every rank over the training group; each keeps its slice."""
    if world > 1:
        box = [groups]
        dist.broadcast_object_list(box, src=0)
        groups = box[0]
    if groups is None:
        return None
    k = len(groups) // world
    return groups[rank * k:(rank + 1) * k]


def run(cfg: LearnerConfig, rank: int, world: int) -> None:
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
    step, graceful = 0, False
    try:
        while cfg.max_steps == 0 or step < cfg.max_steps:
            every = r0.next_groups() if r0 else None  # the step's groups, all ranks' shares
            groups = _share(every, rank, world)
            if groups is None:
                break
            t0 = time.perf_counter()
            stats = trainer.step(groups, version=step)
            step += 1
            if r0:
                # 0.5 GB copied per step for the embedded model: only worth it when actors take weights
                snapshot = trainer.snapshot() if cfg.actors else ([], None)
                r0.state.policy_version = step
                r0.broadcaster.submit(step, *snapshot)
                r0.record(step, every, stats, time.perf_counter() - t0)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                trainer.save(f"{cfg.run_dir}/checkpoint-{step}", tokenizer, {"step": step, "model": cfg.model})
        trainer.save(f"{cfg.run_dir}/checkpoint-final", tokenizer, {"step": step, "model": cfg.model})
        graceful = True
    finally:
        if r0:
            r0.close(graceful)
        # Tear the training group down before the interpreter exits: a process group's
        # threads still alive at exit abort the process ("terminate called without an
        # active exception"), which failed a rank now and then.
        dist.destroy_process_group()
    log.info("learner rank %d finished after %d steps", rank, step)
