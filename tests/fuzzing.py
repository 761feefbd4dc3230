"""Frame generators for fuzzing the learner hub, shared by the fuzz test
(tests/integration/test_fuzz_hub.py, a few hundred frames) and the long fuzz
run (bench/fuzz_hub.py, 100k frames).

Each generator returns a list of messages; a message is a list of frames
(bytes) sent as one multipart message, i.e. one bad frame set, counted once by
the hub. Everything here is refused by ``common.protocol.decode`` except
``wrong_but_decodable`` (refused by the hub after decoding) and
``liar_cases`` (values the hub refuses in a group under a real lease).
The generators take the group size and limits as arguments so that a bench
can fuzz a hub configured differently from the tests'.
"""
from __future__ import annotations

import msgpack
import numpy as np

from common.protocol import SCHEMA_VERSION, Ack, Completion, Trajectories, Welcome, Work, WorkRequest, encode

N = 2
"""Completions per group in the test hub (tests/unit/test_ingest_validation.py)."""


def header(frames: list) -> dict:
    return msgpack.unpackb(bytes(frames[0]))


def with_changes(frames: list, **changes) -> list:
    """``frames`` with these header fields replaced (or added)."""
    h = header(frames)
    h.update(changes)
    return [msgpack.packb(h)] + [bytes(f) for f in frames[1:]]


def sample_group(actor_id: str = "fuzzer", n: int = N) -> list:
    """Frames of a well-formed group, for prompt 0 of a lease that does not exist."""
    comps = [Completion(np.array([5, 6, 7], dtype=np.int32), np.full(3, -0.5, dtype=np.float32), "stop", 1.0, 0)
             for _ in range(n)]
    return [bytes(f) for f in encode(Trajectories(999_999, actor_id, 0, np.arange(1, 4, dtype=np.int32), comps, {}))]


# ----------------------------------------------------------------- decode-level categories
def random_bytes(rng: np.random.Generator, k: int) -> list[list]:
    """``k`` messages of 1-3 frames of 0-199 random bytes."""
    return [[rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))] for _ in range(k)]


def truncated(rng: np.random.Generator, k: int, good: list) -> list[list]:
    """``k`` messages whose msgpack header is cut short (a group's or a work request's)."""
    out = []
    for _ in range(k):
        src = encode(WorkRequest("a", 2, 0)) if rng.random() < 0.3 else good
        head = bytes(src[0])
        out.append([head[:int(rng.integers(0, len(head)))]] + [bytes(f) for f in src[1:]])
    return out


def wrong_versions(good: list) -> list[list]:
    return [with_changes(good, v=v) for v in (0, 2, -1, "1", None, 1.0, True, [1], SCHEMA_VERSION + 1000)]


def lying_lengths(good: list) -> list[list]:
    comp = header(good)["completions"]
    return [
        with_changes(good, completions=[dict(comp[0], len=comp[0]["len"] + 1)] + comp[1:]),
        with_changes(good, completions=[dict(comp[0], len=comp[0]["len"] - 1)] + comp[1:]),
        with_changes(good, prompt_len=header(good)["prompt_len"] + 1),
        good[:-1], good + [b"\0" * 12],
        [good[0], good[1], good[3], good[2]] + good[4:],  # tokens and log-probs swapped: same bytes, bad values
    ]


def huge_sizes(good: list) -> list[list]:
    h = header(good)
    comp = h["completions"]
    return [
        with_changes(good, completions=[dict(comp[0], len=2**40)] + comp[1:]),
        with_changes(good, prompt_len=10**9),
        with_changes(good, completions=[comp[0]] * 5000),
        [msgpack.packb(dict(h, actor_id="x" * (2 * 1024 * 1024)))] + good[1:],  # header over 1 MiB
        with_changes(good, actor_id="y" * (1024 * 1024 + 1)),
    ]


def wrong_types(good: list) -> list[list]:
    """Wrong field types, missing fields, unknown message types, non-map headers."""
    h = header(good)
    comp = h["completions"]
    return [
        with_changes(good, lease_id="7"), with_changes(good, lease_id=True), with_changes(good, prompt_id=1.5),
        with_changes(good, actor_id=7), with_changes(good, completions="abc"),
        with_changes(good, completions=[5] * len(comp)), with_changes(good, timings=[1]),
        with_changes(good, timings={"generate": "slow"}),
        with_changes(good, completions=[dict(comp[0], score="1.0")] + comp[1:]),
        with_changes(good, completions=[dict(comp[0], version=1.5)] + comp[1:]),
        with_changes(good, completions=[dict(comp[0], finish_reason=1)] + comp[1:]),
        [msgpack.packb({k: v for k, v in h.items() if k != "prompt_tokens" and k != "prompt_id"})] + good[1:],
        [msgpack.packb({"v": SCHEMA_VERSION, "type": "launch_missiles"})],
        [msgpack.packb({"v": SCHEMA_VERSION, "type": ["work"]})],
        [msgpack.packb({"v": SCHEMA_VERSION, "type": {"a": 1}})],
        [msgpack.packb({"v": SCHEMA_VERSION, "type": "hello", "actor_id": "a", "engine": "hf", "model": "m",
                        "pid": "1"})],
        [msgpack.packb([SCHEMA_VERSION, "hello"])],
        [msgpack.packb({1: 2})],
        [msgpack.packb({"v": SCHEMA_VERSION, "type": "heartbeat", "actor_id": "a", "policy_version": 0,
                        "weight_seq": 0}), b"extra"],
        [b"\x91" * 100_000 + b"\x01"],  # nesting deeper than msgpack's stack
    ]


def malformed(rng: np.random.Generator, n: int = N) -> list[list]:
    """One of each kind (300 random, 100 truncated, then every fixed case): what decode() must refuse."""
    good = sample_group(n=n)
    return (random_bytes(rng, 300) + truncated(rng, 100, good) + wrong_versions(good) + lying_lengths(good)
            + huge_sizes(good) + wrong_types(good))


# ----------------------------------------------------------------- refused after decoding
def wrong_but_decodable() -> list[list]:
    """Well-formed messages the hub must refuse (no reply to any of them): types an actor
    never sends, and a work request with negative credits from a stranger."""
    return [[bytes(f) for f in encode(Welcome("run", 0, 0, "tcp://x:1", None, []))],
            [bytes(f) for f in encode(WorkRequest("neg", -1, 0))],
            [bytes(f) for f in encode(Ack(1, 1, True, ""))]]


def liar_cases(vocab: int, max_abs_score: float, max_tokens: int) -> list[tuple[dict, str]]:
    """(changes to the first completion of a valid group of 3-token completions, the reason
    the hub must give) for a peer holding a real lease."""
    return [
        (dict(tokens=np.array([5, vocab, 7], dtype=np.int32)), "token_out_of_vocab"),
        (dict(tokens=np.array([-5, 1, 7], dtype=np.int32)), "token_out_of_vocab"),
        (dict(score=max_abs_score * 10), "bad_score"),
        (dict(score=float("nan")), "bad_score"),
        (dict(score=float("-inf")), "bad_score"),
        (dict(logprobs=np.array([-1.0, 0.5, -1.0], dtype=np.float32)), "bad_logprob"),
        (dict(logprobs=np.array([-1.0, np.inf, -1.0], dtype=np.float32)), "bad_logprob"),
        (dict(finish_reason="tool_call"), "bad_finish_reason"),
        (dict(version=10**6), "bad_policy_version"),  # a policy version the learner never had
        (dict(version=-1), "bad_policy_version"),
        (dict(tokens=np.ones(max_tokens + 11, dtype=np.int32),
              logprobs=np.full(max_tokens + 11, -1.0, dtype=np.float32)), "too_long"),
    ]


def valid_group(work: Work, actor_id: str, n: int, i: int = 0, **change) -> Trajectories:
    """A valid group of ``n`` 3-token completions for prompt ``i`` of ``work``, with ``change``
    applied to its first completion."""
    p = work.prompts[i]
    comps = [Completion(np.array([5, 6, 7], dtype=np.int32), np.full(3, -0.5, dtype=np.float32), "stop", 1.0, 0)
             for _ in range(n)]
    for k, v in change.items():
        setattr(comps[0], k, v)
    return Trajectories(work.lease_id, actor_id, p.prompt_id, p.tokens, comps, {})


def liar_groups(work: Work, actor_id: str, n: int, vocab: int, max_abs_score: float,
                max_tokens: int) -> list[tuple[Trajectories, str]]:
    """(group, the reason the hub must refuse it with) from ``actor_id``, which holds ``work``
    (at least 2 prompts): every value case of ``liar_cases``, then group-level lies."""
    out = [(valid_group(work, actor_id, n, i % len(work.prompts), **change), reason)
           for i, (change, reason) in enumerate(liar_cases(vocab, max_abs_score, max_tokens))]
    p0, p1 = work.prompts[0], work.prompts[1]
    comps = valid_group(work, actor_id, n).completions
    other = p1.tokens if not np.array_equal(p0.tokens, p1.tokens) else np.array([9, 9], dtype=np.int32)
    return out + [
        (Trajectories(work.lease_id, actor_id, p0.prompt_id, p0.tokens, comps[:-1] or comps * 2, {}), "group_size"),
        (Trajectories(work.lease_id, actor_id, p0.prompt_id, other, comps, {}), "prompt_mismatch"),
        (Trajectories(work.lease_id, actor_id, 10**6, p0.tokens, comps, {}), "unknown_prompt"),
        (Trajectories(work.lease_id + 10**6, actor_id, p0.prompt_id, p0.tokens, comps, {}), "unknown_lease"),
    ]
