"""Typed configuration of the learner role (``python -m learner``).

Load with ``common.config.load(LearnerConfig, path, overrides)``; ``validate``
refuses bad values and invalid combinations by naming the field, at start.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from common import keys
from common.config import ConfigError, require
from common.data import BUILTIN, load_tasks
from learner.schedule import SCHEDULES

ALGORITHMS = ("flowrl", "grpo", "reinforce_pp")


@dataclass
class SamplingConfig:
    """What actors are asked to generate; sent with every lease."""

    n: int = 4
    """Completions per prompt (the group size)."""
    temperature: float = 1.0
    """Sampling temperature; the learner scores log-probs of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass; must be 1: the learner scores softmax(logits / temperature) over the
    whole vocabulary, and no engine can record that quantity for a top-p truncated sample
    (vLLM records the truncated distribution's log-probs), so importance weights would be wrong."""
    max_tokens: int = 64
    """Completion length limit."""


@dataclass
class AlgoConfig:
    """The objective; the trainer calls whichever ``algorithm`` names."""

    algorithm: str = "flowrl"
    """"flowrl", "grpo" or "reinforce_pp"."""
    beta: float = 15.0
    """FlowRL reward scale: target ∝ π_ref · exp(β · r̂)."""
    is_clip_low: float = 0.8
    """Lower clip of the importance weight; 0 means no lower bound."""
    is_clip_high: float = 1.2
    """Upper clip of the importance weight; inf means no upper bound (reference code: 10)."""
    importance_weighting: bool = True
    """Ablation: false uses w = 1 (no off-policy correction)."""
    length_norm: bool = True
    """Ablation: false uses summed instead of mean token log-probs in δ."""
    use_ref: bool = True
    """Ablation: false drops the reference-model prior from δ (and skips the reference forward)."""
    old_logp_source: str = "actor"
    """π_old for the importance weight: "actor" (behaviour log-probs recorded at sampling) or
    "learner" (recomputed at the start of the step with the current weights, i.e. on-policy w≈1)."""
    log_z_lr: float = 0.0
    """Learning rate of the log Z head; 0 means the policy's lr."""
    clip_eps: float = 0.2
    """GRPO / REINFORCE++ ratio clip."""
    kl_coef: float = 0.0
    """GRPO k3 KL coefficient / REINFORCE++ token-level KL penalty coefficient."""

    def validate(self) -> None:
        require(self.algorithm in ALGORITHMS, "algo.algorithm", f"unknown {self.algorithm!r}; one of {ALGORITHMS}")
        require(self.beta > 0, "algo.beta", f"must be > 0, got {self.beta}")
        require(self.is_clip_low >= 0, "algo.is_clip_low", "must be >= 0")
        require(self.is_clip_low <= self.is_clip_high, "algo.is_clip_low",
                f"lower bound {self.is_clip_low} is above upper bound {self.is_clip_high}")
        require(self.old_logp_source in ("actor", "learner"), "algo.old_logp_source", "must be 'actor' or 'learner'")
        require(self.log_z_lr >= 0, "algo.log_z_lr", "must be >= 0")
        require(0 < self.clip_eps < 1, "algo.clip_eps", "must be in (0, 1)")
        require(self.kl_coef >= 0, "algo.kl_coef", "must be >= 0")

    @property
    def is_clip(self) -> tuple[float | None, float | None] | None:
        if not self.importance_weighting:
            return None
        return (self.is_clip_low or None, None if math.isinf(self.is_clip_high) else self.is_clip_high)


@dataclass
class LearnerConfig:
    model: str = "embedded"
    """Local HF model directory or "embedded"; actors must load the same."""
    dtype: str = "float32"
    """Training dtype of the policy and reference."""
    tasks: str = "arithmetic"
    """Built-in task name, or a .jsonl or .parquet file of {"prompt", "answer", "kind"} records or
    of math records in veRL's layout (common/data.py); a file is read whole (num_prompts does not
    apply to it) and checked at start."""
    num_prompts: int = 512
    """Prompts drawn from a built-in task."""
    task_seed: int = 0
    """Seed of the built-in task generator."""
    epochs: int = 0
    """Passes over the prompts; 0 means until max_steps."""
    max_steps: int = 100
    """Optimizer steps to run; 0 means until the epochs are done."""
    groups_per_step: int = 4
    """Prompt groups per optimizer step (batch = groups_per_step × sampling.n sequences)."""
    micro_batch_seqs: int = 8
    """Sequences per forward/backward on one rank (gradient accumulation covers the rest)."""
    buffer_capacity: int = 64
    """Most prompt groups buffered plus in flight."""
    max_staleness: int = 2
    """Groups generated more than this many versions ago are dropped and their prompts re-queued."""
    lease_timeout_s: float = 600.0
    """A leased prompt not returned within this is re-queued (its actor is presumed dead)."""
    late_group_wait_s: float = 10.0
    """How long a step that has its groups waits for an older group still in flight that this
    step is the last allowed to train (a slower actor's): waiting costs the learner this much
    at most, not waiting drops that group's whole generation. 0: never wait."""
    lr: float = 1e-6
    """AdamW learning rate of the policy (the peak, when a schedule warms up or decays it)."""
    lr_warmup_steps: int = 0
    """Optimizer steps over which the learning rate rises linearly to ``lr`` (step k uses
    lr × (k+1)/lr_warmup_steps); 0: the full rate from the first step. Applies to the log Z
    head's rate too."""
    lr_schedule: str = "constant"
    """After the warm-up: "constant", or "cosine" (half a cosine from ``lr`` towards
    ``min_lr_ratio`` × lr, reached one step past the last of ``max_steps``, as transformers'
    cosine schedule does: the last step still moves when min_lr_ratio is 0)."""
    min_lr_ratio: float = 0.0
    """Where "cosine" ends, as a fraction of ``lr``."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip (DeepSpeed gradient_clipping)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1 or 2 (optimizer state and gradients sharded over ranks). Stage 3
    is refused: the broadcast to actors needs every rank-0 parameter whole."""
    bind: str = "tcp://*:5555"
    """ROUTER endpoint actors connect to."""
    pub_bind: str = "tcp://*:5556"
    """PUB endpoint for version announcements."""
    advertise_host: str = "127.0.0.1"
    """Host name actors use to reach this learner's PUB socket and broadcast rendezvous."""
    actors: int = 2
    """The most actors served at once (seats); more are told to retry later. Actors join,
    leave and crash at any time: the broadcast group is re-formed when membership changes."""
    weight_backend: str = "auto"
    """Collective backend of the weight broadcast: "nccl", "gloo" or "auto" (NCCL when the learner
    and every actor hold weights on distinct GPUs, else gloo: NCCL cannot put two ranks on one GPU)."""
    weight_port: int = 29555
    """TCP port of the broadcast group's rendezvous (separate from the training group's)."""
    broadcast_timeout_s: float = 120.0
    """Bound on forming the broadcast group and on one broadcast: members that are not there
    in time are evicted and the rest go on."""
    metrics_port: int = 9100
    """Rank 0 serves /metrics and /health here (other ranks all-reduce their step statistics into it); 0 picks a free port."""
    run_dir: str = "runs/flowrl"
    """Step log (steps.jsonl) and checkpoints go here."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many steps; 0: only at the end (and on SIGTERM)."""
    keep_checkpoints: int = 3
    """Resumable checkpoints kept in run_dir/checkpoints (the newest)."""
    resume: str = "never"
    """"auto": continue from the newest complete checkpoint in run_dir (or start fresh if none);
    "never": start fresh (run_dir's checkpoints and step log are cleared); or a checkpoint path."""
    min_actors: int = 1
    """No work is leased until this many actors have joined (then training starts)."""
    actor_timeout_s: float = 120.0
    """An actor unheard of for this long loses its seat (its leases are re-queued at once)."""
    linger_s: float = 0.0
    """Keep /metrics up this long after the run so a scraper sees the final values."""
    seed: int = 0
    """Torch and data-order seed."""
    torch_threads: int = 0
    """Intra-op threads per rank; 0 leaves torch's default."""
    max_abs_score: float = 1e4
    """The hub refuses a group with a score whose magnitude is above this (counted as "bad_score"):
    scores are normalised in float32, where a huge one overflows to inf and then NaN."""
    curve_dir: str = ""
    """Folder written by ``python -m common.keys``: turns CURVE on for the ROUTER and PUB sockets,
    which then accept only the client keys in ``curve_dir/authorized``. Empty: CURVE off."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)

    def validate(self, world_size: int = 1) -> None:
        self.algo.validate()
        s = self.sampling
        require(s.n >= 2, "sampling.n", "must be >= 2 (group-normalised rewards need a group)")
        require(s.temperature > 0, "sampling.temperature", "must be > 0")
        require(s.top_p == 1.0, "sampling.top_p",
                f"must be 1.0, got {s.top_p}: with top-p the actors' recorded log-probs (vLLM: of the "
                "truncated distribution) would not be the ones the learner scores")
        require(s.max_tokens >= 1, "sampling.max_tokens", "must be >= 1")
        require(self.dtype in ("float32", "bfloat16"), "dtype", f"unsupported {self.dtype!r}")
        require(self.max_steps > 0 or self.epochs > 0, "max_steps", "max_steps and epochs cannot both be 0")
        require(self.max_steps >= 0 and self.epochs >= 0, "max_steps", "must be >= 0")
        require(self.groups_per_step >= 1 and self.micro_batch_seqs >= 1, "groups_per_step", "must be >= 1")
        require(self.groups_per_step % world_size == 0, "groups_per_step",
                f"{self.groups_per_step} groups must split evenly over {world_size} ranks (groups are never split)")
        require(self.buffer_capacity >= self.groups_per_step, "buffer_capacity", "must hold at least one step's groups")
        require(self.max_staleness >= 0, "max_staleness", "must be >= 0")
        require(self.late_group_wait_s >= 0, "late_group_wait_s", "must be >= 0")
        require(self.lease_timeout_s > 0 and self.broadcast_timeout_s > 0, "lease_timeout_s", "timeouts must be > 0")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
        require(self.lr_schedule in SCHEDULES, "lr_schedule", f"unknown {self.lr_schedule!r}; one of {SCHEDULES}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr_schedule == "cosine":
            require(self.max_steps > 0, "lr_schedule",
                    "cosine decays over max_steps: set max_steps (an epochs-only run has no known end)")
            require(self.lr_warmup_steps < self.max_steps, "lr_warmup_steps",
                    f"{self.lr_warmup_steps} leaves none of the {self.max_steps} steps to the cosine decay")
        require(self.zero_stage in (0, 1, 2), "zero_stage",
                f"must be 0, 1 or 2, got {self.zero_stage} (stage 3 partitions the parameters that the "
                "weight broadcast sends whole)")
        require(self.weight_backend in ("auto", "nccl", "gloo"), "weight_backend",
                f"must be 'auto', 'nccl' or 'gloo', got {self.weight_backend!r}")
        require(self.actors >= 0, "actors", "must be >= 0")
        require(0 <= self.metrics_port < 65536 and 0 <= self.weight_port < 65536, "metrics_port", "must be a port")
        require(self.linger_s >= 0, "linger_s", "must be >= 0")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(self.resume in ("auto", "never") or bool(self.resume), "resume", "'auto', 'never' or a path")
        require(1 <= self.min_actors <= max(self.actors, 1), "min_actors", "must be in [1, actors]")
        require(self.actor_timeout_s > 0, "actor_timeout_s", "must be > 0")
        if self.tasks in BUILTIN:
            require(self.num_prompts >= self.groups_per_step, "num_prompts", "must be at least groups_per_step")
        # 1e15: a group's sum of squared scores (for the std) stays far inside float32's range
        require(math.isfinite(self.max_abs_score) and 0 < self.max_abs_score <= 1e15, "max_abs_score",
                f"must be in (0, 1e15], got {self.max_abs_score}")
        if self.curve_dir:
            lacking = keys.missing(self.curve_dir, keys.SERVER_FILES)
            require(not lacking, "curve_dir", f"{self.curve_dir} lacks {', '.join(lacking)}; "
                                              f"create it with: python -m common.keys DIR")

    def check_inputs(self) -> None:
        """Read what the fields name on this machine: the task file (every record, so a bad one
        stops the run at start, not an actor mid-run) and a resume checkpoint. The learner calls
        this at start; ``validate`` does not read files, so a config can be checked where they
        are not (ops/: manifests name paths inside the pods)."""
        if self.tasks not in BUILTIN:
            try:
                items = load_tasks(self.tasks, n=0, seed=0)
            except ValueError as e:
                raise ConfigError(f"tasks: {e}") from None
            require(len(items) >= self.groups_per_step, "tasks",
                    f"{self.tasks} has {len(items)} prompts, fewer than groups_per_step {self.groups_per_step}")
            _check_references(self.tasks, items)
        if self.resume not in ("auto", "never"):
            require((Path(self.resume) / "meta.json").is_file(), "resume",
                    f"{self.resume} is not a complete checkpoint (no meta.json); checkpoints are "
                    f"{self.run_dir}/checkpoints/step-NNNNNNNN")


def _check_references(path: str, items) -> None:
    """Read each code and choice reference with the scorer's own parser: one it cannot read
    would be refused at every lease of that prompt, which would come back again and again."""
    from reward_sandbox.choice import parse_reference
    from reward_sandbox.code_reward import parse_tests

    parsers = {"code": parse_tests, "choice": parse_reference}
    for i, item in enumerate(items, 1):
        if item.kind in parsers:
            try:
                parsers[item.kind](item.reference)
            except ValueError as e:
                raise ConfigError(f"tasks: {path} record {i} ({item.kind}): {e}") from None
