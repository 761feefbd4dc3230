"""Wire protocol shared by every role (DESIGN.md section 4).

A message is a ZeroMQ multipart message: frame 0 is a msgpack header
``{"v": SCHEMA_VERSION, "type": ..., ...}``; arrays follow as raw frames
(int32 token ids, float32 log-probs) sent without copying and rebuilt with
``numpy.frombuffer``. No pickle anywhere.

``decode`` checks everything before anything is used: schema version, type,
field types, array lengths against the header, and hard size limits. Any
malformed input raises ``ProtocolError`` (with a short ``reason`` used as a
metric label) and nothing else.

It then checks the values of a trajectory group that need no context: finish
reasons from ``FINISH_REASONS`` (reason ``bad_finish_reason``), finite scores
(``bad_score``), finite log-probs <= 0 (``bad_logprob``). Such a group is
well-formed, so the ``ProtocolError`` carries it as ``message`` and the hub can
answer it with a refusing Ack. Checks that need the run's settings (token ids
within the vocabulary, the score bound) are the hub's (learner/hub.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

SCHEMA_VERSION = 1

TOKEN_DTYPE = np.dtype("<i4")
LOGPROB_DTYPE = np.dtype("<f4")


class ProtocolError(Exception):
    """A message that cannot be accepted. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str, message: Any = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.message = message
        """The decoded message when it was well-formed but a value in it is refused; else None."""


@dataclass(frozen=True)
class WeightRef:
    """A weight broadcast (``seq``: broadcasts started so far) and the policy version it
    carries. Published and read as one immutable value, never field by field: a reader
    that took ``seq`` and ``version`` separately could pair a new seq with an old version
    and tag fresh work as stale (issue 10, "A version race")."""

    seq: int
    version: int


@dataclass(frozen=True)
class Limits:
    """Hard limits enforced on decode; a message over any of them is refused."""

    max_message_bytes: int = 256 * 1024 * 1024
    """Total bytes over all frames."""
    max_header_bytes: int = 1024 * 1024
    """Bytes of the msgpack header frame."""
    max_tokens_per_seq: int = 65536
    """Tokens in one prompt or one completion."""
    max_seqs_per_message: int = 1024
    """Prompts in a Work message, or completions in a Trajectories message."""
    max_text_chars: int = 1024 * 1024
    """Characters of any string field (references, completions for scoring)."""


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------- messages
@dataclass
class Sampling:
    """Sampling parameters the learner hands out with each lease."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class Hello:
    TYPE: ClassVar[str] = "hello"
    actor_id: str
    engine: str
    model: str
    pid: int


@dataclass
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    run_id: str
    policy_version: int
    weight_seq: int
    """Number of weight broadcasts started so far; the actor joins the group at this count."""
    pub_endpoint: str
    weight_group: dict | None
    """{host, port, backend, timeout_s}: the weight broadcast's rendezvous store, where the
    learner posts each group generation's members and broadcasts (common/weight_sync.py);
    None: the learner has no broadcast (no actor takes weights)."""
    manifest: list
    """[[name, shape, dtype], ...] in broadcast order; empty when weight_group is None."""


@dataclass
class WorkRequest:
    TYPE: ClassVar[str] = "work_request"
    actor_id: str
    credits: int
    policy_version: int


@dataclass
class Prompt:
    prompt_id: int
    kind: str
    """Scoring kind: "math" (reference is the answer) or "code" (reference is JSON tests)."""
    reference: str
    tokens: np.ndarray


@dataclass
class Work:
    TYPE: ClassVar[str] = "work"
    lease_id: int
    policy_version: int
    """Version of the weights of broadcast ``weight_seq``: what the actor holds once caught up."""
    weight_seq: int
    deadline_s: float
    """Seconds from receipt until the lease expires and its prompts are re-queued."""
    sampling: Sampling
    prompts: list[Prompt]
    retry_after_s: float = 0.0
    """When prompts is empty: wait this long before asking again."""


@dataclass
class Completion:
    tokens: np.ndarray
    logprobs: np.ndarray
    """Behaviour log-prob of each sampled token under softmax(logits / temperature)."""
    finish_reason: str
    score: float
    version: int
    """Policy version that generated this completion."""


@dataclass
class Trajectories:
    TYPE: ClassVar[str] = "trajectories"
    lease_id: int
    actor_id: str
    prompt_id: int
    prompt_tokens: np.ndarray
    completions: list[Completion]
    timings: dict = field(default_factory=dict)
    """Seconds spent per phase, e.g. {"generate": 1.2, "score": 0.1}; empty if unknown."""


@dataclass
class Ack:
    TYPE: ClassVar[str] = "ack"
    lease_id: int
    prompt_id: int
    accepted: bool
    reason: str = ""
    """Why it was refused; empty when accepted."""


@dataclass
class Heartbeat:
    TYPE: ClassVar[str] = "heartbeat"
    actor_id: str
    policy_version: int
    weight_seq: int


@dataclass
class Release:
    """An actor hands prompts back unfinished: they are re-queued at once, not at the
    lease deadline (a scorer that keeps failing, an actor told to stop)."""

    TYPE: ClassVar[str] = "release"
    actor_id: str
    lease_ids: list
    """Leases to hand back whole; empty: every lease this actor holds."""
    leaving: bool
    """The actor stops: it also leaves the weight group and its seat is freed."""

    def __post_init__(self):
        if len(self.lease_ids) > DEFAULT_LIMITS.max_seqs_per_message or \
                not all(type(x) is int and x >= 0 for x in self.lease_ids):
            raise ProtocolError("bad_field", "release.lease_ids must be a short list of lease ids")


@dataclass
class VersionAnnounce:
    TYPE: ClassVar[str] = "version"
    policy_version: int
    weight_seq: int
    """Sequence number of the broadcast about to start for this version."""


@dataclass
class Error:
    TYPE: ClassVar[str] = "error"
    reason: str
    """"shutdown": the run is over, exit; "stopping": the learner is going away and will be
    back (preemption, restart): hand work back and reconnect; "unknown_actor": say hello
    again (a restarted learner); "full": every seat is taken, retry later."""
    detail: str


# ----------------------------------------------------------------- encoding
def _frame_bytes(a: np.ndarray, dtype: np.dtype) -> memoryview:
    return memoryview(np.ascontiguousarray(a, dtype=dtype)).cast("B")


def encode(msg: Any) -> list:
    """Header frame + array frames (memoryviews, so zmq sends without a copy)."""
    header = {"v": SCHEMA_VERSION, "type": msg.TYPE}
    frames: list = []
    if isinstance(msg, Work):
        header.update(lease_id=msg.lease_id, policy_version=msg.policy_version,
                      weight_seq=msg.weight_seq, deadline_s=msg.deadline_s,
                      retry_after_s=msg.retry_after_s, sampling=msg.sampling.__dict__,
                      prompts=[{"prompt_id": p.prompt_id, "kind": p.kind, "reference": p.reference,
                                "len": int(len(p.tokens))} for p in msg.prompts])
        frames = [_frame_bytes(p.tokens, TOKEN_DTYPE) for p in msg.prompts]
    elif isinstance(msg, Trajectories):
        header.update(lease_id=msg.lease_id, actor_id=msg.actor_id, prompt_id=msg.prompt_id,
                      prompt_len=int(len(msg.prompt_tokens)), timings=msg.timings,
                      completions=[{"len": int(len(c.tokens)), "finish_reason": c.finish_reason,
                                    "score": float(c.score), "version": int(c.version)}
                                   for c in msg.completions])
        frames = [_frame_bytes(msg.prompt_tokens, TOKEN_DTYPE)]
        for c in msg.completions:
            frames += [_frame_bytes(c.tokens, TOKEN_DTYPE), _frame_bytes(c.logprobs, LOGPROB_DTYPE)]
    else:
        header.update(msg.__dict__)
    return [msgpack.packb(header, use_bin_type=True)] + frames


# ----------------------------------------------------------------- decoding
_SIMPLE: dict[str, tuple[type, dict[str, tuple]]] = {
    "hello": (Hello, {"actor_id": (str,), "engine": (str,), "model": (str,), "pid": (int,)}),
    "welcome": (Welcome, {"run_id": (str,), "policy_version": (int,), "weight_seq": (int,),
                          "pub_endpoint": (str,), "weight_group": (dict, type(None)),
                          "manifest": (list,)}),
    "work_request": (WorkRequest, {"actor_id": (str,), "credits": (int,), "policy_version": (int,)}),
    "ack": (Ack, {"lease_id": (int,), "prompt_id": (int,), "accepted": (bool,), "reason": (str,)}),
    "heartbeat": (Heartbeat, {"actor_id": (str,), "policy_version": (int,), "weight_seq": (int,)}),
    "version": (VersionAnnounce, {"policy_version": (int,), "weight_seq": (int,)}),
    "release": (Release, {"actor_id": (str,), "lease_ids": (list,), "leaving": (bool,)}),
    "error": (Error, {"reason": (str,), "detail": (str,)}),
}
FINISH_REASONS = ("stop", "length")
"""Every finish reason an engine may report; anything else is refused (``bad_finish_reason``)."""


def _get(h: dict, key: str, types: tuple, limits: Limits, finite: bool = True):
    if key not in h:
        raise ProtocolError("missing_field", f"{h.get('type')}.{key}")
    val = h[key]
    # bool is an int subclass: refuse it where an int is meant, and vice versa.
    if not isinstance(val, types) or (isinstance(val, bool) and bool not in types):
        raise ProtocolError("bad_field", f"{h.get('type')}.{key} is {type(val).__name__}")
    if isinstance(val, str) and len(val) > limits.max_text_chars:
        raise ProtocolError("too_large", f"{h.get('type')}.{key} has {len(val)} chars")
    if finite and isinstance(val, float) and not np.isfinite(val):
        raise ProtocolError("bad_field", f"{h.get('type')}.{key} is not finite")
    return val


def _array(frame, length: int, dtype: np.dtype, limits: Limits, what: str) -> np.ndarray:
    if not 0 <= length <= limits.max_tokens_per_seq:
        raise ProtocolError("too_large", f"{what} length {length}")
    buf = memoryview(frame)
    if buf.nbytes != length * dtype.itemsize:
        raise ProtocolError("bad_frame", f"{what}: {buf.nbytes} bytes for {length} x {dtype}")
    return np.frombuffer(buf, dtype=dtype)


def _num(h: dict, key: str, limits: Limits) -> float:
    return float(_get(h, key, (int, float), limits))


def _decode_work(h: dict, arrays: list, limits: Limits) -> Work:
    s = _get(h, "sampling", (dict,), limits)
    sampling = Sampling(n=_get(s, "n", (int,), limits), temperature=_num(s, "temperature", limits),
                        top_p=_num(s, "top_p", limits), max_tokens=_get(s, "max_tokens", (int,), limits))
    if not (1 <= sampling.n <= limits.max_seqs_per_message and sampling.temperature > 0
            and 0 < sampling.top_p <= 1 and 1 <= sampling.max_tokens <= limits.max_tokens_per_seq):
        raise ProtocolError("bad_field", f"work.sampling out of range: {sampling}")
    heads = _get(h, "prompts", (list,), limits)
    if len(heads) > limits.max_seqs_per_message or len(heads) != len(arrays):
        raise ProtocolError("bad_frame", f"work has {len(heads)} prompts and {len(arrays)} frames")
    prompts = []
    for ph, frame in zip(heads, arrays):
        if not isinstance(ph, dict):
            raise ProtocolError("bad_field", "work.prompts item is not a map")
        prompts.append(Prompt(prompt_id=_get(ph, "prompt_id", (int,), limits), kind=_get(ph, "kind", (str,), limits),
                              reference=_get(ph, "reference", (str,), limits),
                              tokens=_array(frame, _get(ph, "len", (int,), limits), TOKEN_DTYPE, limits, "prompt")))
    return Work(lease_id=_get(h, "lease_id", (int,), limits), policy_version=_get(h, "policy_version", (int,), limits),
                weight_seq=_get(h, "weight_seq", (int,), limits), deadline_s=_num(h, "deadline_s", limits),
                retry_after_s=_num(h, "retry_after_s", limits), sampling=sampling, prompts=prompts)


def _decode_trajectories(h: dict, arrays: list, limits: Limits) -> Trajectories:
    heads = _get(h, "completions", (list,), limits)
    if not 1 <= len(heads) <= limits.max_seqs_per_message:
        raise ProtocolError("too_large" if heads else "bad_field", f"trajectories has {len(heads)} completions")
    if len(arrays) != 1 + 2 * len(heads):
        raise ProtocolError("bad_frame", f"trajectories: {len(arrays)} frames for {len(heads)} completions")
    completions = []
    for i, ch in enumerate(heads):
        c = _completion_fast(ch, arrays[1 + 2 * i], arrays[2 + 2 * i], limits)
        completions.append(c if c is not None else _completion(ch, arrays[1 + 2 * i], arrays[2 + 2 * i], limits))
    timings = _get(h, "timings", (dict,), limits)
    if not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in timings.items()):
        raise ProtocolError("bad_field", "trajectories.timings must map str to number")
    prompt = _array(arrays[0], _get(h, "prompt_len", (int,), limits), TOKEN_DTYPE, limits, "prompt")
    msg = Trajectories(lease_id=_get(h, "lease_id", (int,), limits), actor_id=_get(h, "actor_id", (str,), limits),
                       prompt_id=_get(h, "prompt_id", (int,), limits), prompt_tokens=prompt,
                       completions=completions, timings=timings)
    _check_values(msg)
    return msg


def _completion(ch, tokens, logprobs, limits: Limits) -> Completion:
    """One completion from its header and frames, every field checked; raises the first error."""
    if not isinstance(ch, dict):
        raise ProtocolError("bad_field", "trajectories.completions item is not a map")
    n = _get(ch, "len", (int,), limits)
    if n == 0:
        raise ProtocolError("bad_field", "empty completion")
    # score: a number here; whether it is finite is a value check (_check_values)
    score = _get(ch, "score", (int, float), limits, finite=False)
    return Completion(tokens=_array(tokens, n, TOKEN_DTYPE, limits, "completion"),
                      logprobs=_array(logprobs, n, LOGPROB_DTYPE, limits, "logprobs"),
                      finish_reason=_get(ch, "finish_reason", (str,), limits), score=float(score),
                      version=_get(ch, "version", (int,), limits))


def _completion_fast(ch, tokens, logprobs, limits: Limits) -> Completion | None:
    """``_completion`` for a header an encoder wrote, in a fraction of the time (a group has
    many completions and the hub decodes every group); None for anything else, which
    ``_completion`` then refuses with its reason. Accepts exactly what ``_completion`` accepts:
    exact types (msgpack yields no subclasses; ``type() is int`` refuses bool as _get does)."""
    if type(ch) is not dict:
        return None
    n, score, finish, version = ch.get("len"), ch.get("score"), ch.get("finish_reason"), ch.get("version")
    if type(n) is not int or not 0 < n <= limits.max_tokens_per_seq or type(version) is not int \
            or (type(score) is not float and type(score) is not int) \
            or type(finish) is not str or len(finish) > limits.max_text_chars:
        return None
    tokens, logprobs = memoryview(tokens), memoryview(logprobs)
    if tokens.nbytes != n * TOKEN_DTYPE.itemsize or logprobs.nbytes != n * LOGPROB_DTYPE.itemsize:
        return None
    return Completion(np.frombuffer(tokens, dtype=TOKEN_DTYPE), np.frombuffer(logprobs, dtype=LOGPROB_DTYPE),
                      finish, float(score), version)


def _check_values(msg: Trajectories) -> None:
    """Refuse values that would poison training (a NaN score becomes NaN advantages, a
    positive log-prob an importance weight above 1 for no reason), one reason per check."""
    comps = msg.completions
    if all(c.finish_reason in FINISH_REASONS and math.isfinite(c.score) for c in comps):
        # the whole group's log-probs at once: NaN propagates through min and max and fails
        # both comparisons, so this passes exactly when every value is finite and <= 0
        lp = comps[0].logprobs if len(comps) == 1 else np.concatenate([c.logprobs for c in comps])
        if lp.min() > -np.inf and lp.max() <= 0:
            return
    for i, c in enumerate(comps):  # something is refused: the first completion at fault, and why
        if c.finish_reason not in FINISH_REASONS:
            raise ProtocolError("bad_finish_reason", f"completion {i}: finish_reason {c.finish_reason!r}", msg)
        if not np.isfinite(c.score):
            raise ProtocolError("bad_score", f"completion {i}: score {c.score!r} is not finite", msg)
        if not np.all(np.isfinite(c.logprobs)) or np.any(c.logprobs > 0):
            raise ProtocolError("bad_logprob", f"completion {i}: log-probs must be finite and <= 0", msg)


def decode(frames: list, limits: Limits = DEFAULT_LIMITS):
    """Rebuild a message from zmq frames (bytes, memoryview or zmq.Frame)."""
    if not frames:
        raise ProtocolError("bad_frame", "empty message")
    views = [memoryview(f) for f in frames]  # zmq.Frame has the buffer protocol too
    if sum(v.nbytes for v in views) > limits.max_message_bytes:
        raise ProtocolError("too_large", "message bytes over limit")
    if views[0].nbytes > limits.max_header_bytes:
        raise ProtocolError("too_large", "header bytes over limit")
    try:
        h = msgpack.unpackb(views[0], raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError("bad_header", f"not msgpack: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError("bad_header", "header is not a map")
    # exactly the int: 1.0 and True compare equal to 1 but are not what any encoder writes
    if type(h.get("v")) is not int or h["v"] != SCHEMA_VERSION:
        raise ProtocolError("bad_version", f"schema {h.get('v')!r}, expected {SCHEMA_VERSION}")
    kind = h.get("type")
    arrays = views[1:]
    if kind == "work":
        return _decode_work(h, arrays, limits)
    if kind == "trajectories":
        return _decode_trajectories(h, arrays, limits)
    if not isinstance(kind, str) or kind not in _SIMPLE:  # a list here would be unhashable: TypeError
        raise ProtocolError("bad_type", f"unknown message type {kind!r}")
    if arrays:
        raise ProtocolError("bad_frame", f"{kind} carries no arrays")
    cls, spec = _SIMPLE[kind]
    return cls(**{k: _get(h, k, t, limits) for k, t in spec.items()})


# ============================================================================
# Reward sandbox service (reward_sandbox/service.py, reward_sandbox/client.py)
# ----------------------------------------------------------------------------
# A scoring request from an actor to a sandbox pod and its reply. Plain header
# messages (no array frames), registered in _SIMPLE below; item-level checks
# run in __post_init__, so decode() refuses a bad one with ProtocolError.
# ============================================================================
SCORE_KINDS = ("math", "code", "choice", "exec")
"""math: references are answers; code: references are JSON tests; choice: JSON
lists of accepted integers; exec: run each completion as a program with
references[i] as its stdin."""
SCORE_STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed", "refused")
MAX_SCORE_TIMEOUT_S = 600.0


def _str_list(name: str, items: list, limits: Limits) -> None:
    if len(items) > limits.max_seqs_per_message:
        raise ProtocolError("too_large", f"{name} has {len(items)} items")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise ProtocolError("bad_field", f"{name}[{i}] is {type(x).__name__}")
        if len(x) > limits.max_text_chars:
            raise ProtocolError("too_large", f"{name}[{i}] has {len(x)} chars")


@dataclass
class ScoreRequest:
    TYPE: ClassVar[str] = "score_request"
    request_id: str
    kind: str
    completions: list
    references: list
    timeout_s: float
    memory_mb: int

    def __post_init__(self):
        if self.kind not in SCORE_KINDS:
            raise ProtocolError("bad_field", f"score_request.kind {self.kind!r}, expected one of {SCORE_KINDS}")
        if len(self.completions) != len(self.references):
            raise ProtocolError("bad_field", f"score_request has {len(self.completions)} completions "
                                             f"and {len(self.references)} references")
        _str_list("score_request.completions", self.completions, DEFAULT_LIMITS)
        _str_list("score_request.references", self.references, DEFAULT_LIMITS)
        t = float(self.timeout_s)
        if not (np.isfinite(t) and 0 < t <= MAX_SCORE_TIMEOUT_S):
            raise ProtocolError("bad_field", f"score_request.timeout_s {self.timeout_s!r} not in (0, {MAX_SCORE_TIMEOUT_S}]")
        if not 32 <= self.memory_mb <= 65536:
            raise ProtocolError("bad_field", f"score_request.memory_mb {self.memory_mb!r} not in [32, 65536]")


@dataclass
class ScoreReply:
    TYPE: ClassVar[str] = "score_reply"
    request_id: str
    scores: list
    statuses: list
    """Per item, one of SCORE_STATUSES."""
    error: str = ""
    """Non-empty when the whole request was refused (then scores and statuses are empty)."""

    def __post_init__(self):
        if len(self.scores) != len(self.statuses):
            raise ProtocolError("bad_field", f"score_reply has {len(self.scores)} scores and {len(self.statuses)} statuses")
        if len(self.scores) > DEFAULT_LIMITS.max_seqs_per_message:
            raise ProtocolError("too_large", f"score_reply has {len(self.scores)} items")
        for i, s in enumerate(self.scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
                raise ProtocolError("bad_field", f"score_reply.scores[{i}] = {s!r} not in [0, 1]")
        for i, s in enumerate(self.statuses):
            if s not in SCORE_STATUSES:
                raise ProtocolError("bad_field", f"score_reply.statuses[{i}]: unknown status {s!r}")


_SIMPLE["score_request"] = (ScoreRequest, {"request_id": (str,), "kind": (str,), "completions": (list,),
                                           "references": (list,), "timeout_s": (int, float), "memory_mb": (int,)})
_SIMPLE["score_reply"] = (ScoreReply, {"request_id": (str,), "scores": (list,), "statuses": (list,), "error": (str,)})
