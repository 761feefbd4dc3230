"""Wire protocol: round trips, zero-copy frames, and refusal of malformed input."""
import msgpack
import numpy as np
import pytest

from common.protocol import (Ack, Completion, Heartbeat, Hello, Limits, Prompt, ProtocolError, Sampling,
                             Trajectories, Welcome, Work, decode, encode)


def _traj(n=3, length=5):
    rng = np.random.default_rng(0)
    comps = [Completion(rng.integers(0, 100, length, dtype=np.int32), -rng.random(length, dtype=np.float32),
                        "stop" if i % 2 else "length", float(i), 7) for i in range(n)]
    return Trajectories(4, "a0", 11, np.arange(9, dtype=np.int32), comps, {"generate": 1.5})


def test_trajectories_round_trip_is_exact():
    msg = _traj()
    out = decode([bytes(f) for f in encode(msg)])
    assert isinstance(out, Trajectories)
    assert (out.lease_id, out.actor_id, out.prompt_id, out.timings) == (4, "a0", 11, {"generate": 1.5})
    np.testing.assert_array_equal(out.prompt_tokens, msg.prompt_tokens)
    for a, b in zip(out.completions, msg.completions):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        assert (a.finish_reason, a.score, a.version) == (b.finish_reason, b.score, b.version)
        assert a.tokens.dtype == np.int32 and a.logprobs.dtype == np.float32


def test_array_frames_are_not_copied_on_encode():
    tokens = np.arange(6, dtype=np.int32)
    frames = encode(Work(1, 0, 0, 30.0, Sampling(2, 1.0, 1.0, 8), [Prompt(0, "math", "3", tokens)]))
    view = frames[1]
    tokens[0] = 99  # the frame is a view of the caller's array
    assert np.frombuffer(view, dtype=np.int32)[0] == 99


@pytest.mark.parametrize("msg", [
    Hello("a", "hf", "m", 12),
    Welcome("run", 3, 2, "tcp://h:1", {"host": "h", "port": 1, "world_size": 3, "rank": 1, "backend": "gloo",
                                       "timeout_s": 5.0}, [["w", [2, 2], "float32"]]),
    Welcome("run", 0, 0, "tcp://h:1", None, []),
    Ack(1, 2, False, "stale"),
    Heartbeat("a", 1, 1),
    Work(5, 2, 1, 60.0, Sampling(4, 0.7, 0.9, 32), [Prompt(i, "math", str(i), np.arange(i + 1, dtype=np.int32))
                                                  for i in range(3)]),
])
def test_round_trip(msg):
    out = decode(encode(msg))
    assert type(out) is type(msg)
    if isinstance(msg, Work):
        assert [p.prompt_id for p in out.prompts] == [0, 1, 2]
        assert out.sampling == msg.sampling
        np.testing.assert_array_equal(out.prompts[2].tokens, [0, 1, 2])
    else:
        assert out == msg


def _header(frames):
    return msgpack.unpackb(frames[0])


def _with_header(frames, **changes):
    h = _header(frames)
    h.update(changes)
    return [msgpack.packb(h)] + list(frames[1:])


def _bad_cases():
    good = encode(_traj())
    h = _header(good)
    comps = h["completions"]
    yield "empty", [], "bad_frame"
    yield "not msgpack", [b"\xc1\xc1garbage"], "bad_header"
    yield "header is a list", [msgpack.packb([1, 2])], "bad_header"
    yield "old schema", _with_header(good, v=0), "bad_version"
    yield "unknown type", _with_header(good, type="launch_missiles"), "bad_type"
    yield "missing field", [msgpack.packb({k: v for k, v in h.items() if k != "prompt_id"})] + good[1:], "missing_field"
    yield "wrong field type", _with_header(good, prompt_id="11"), "bad_field"
    yield "bool for int", _with_header(good, lease_id=True), "bad_field"
    yield "missing frame", good[:-1], "bad_frame"
    yield "extra frame", good + [b"1234"], "bad_frame"
    yield "length mismatch", _with_header(good, completions=[dict(comps[0], len=6)] + comps[1:]), "bad_frame"
    yield "bad finish", _with_header(good, completions=[dict(comps[0], finish_reason="eaten")] + comps[1:]), "bad_finish_reason"
    yield "nan score", _with_header(good, completions=[dict(comps[0], score=float("nan"))] + comps[1:]), "bad_score"
    yield "no completions", [msgpack.packb(dict(h, completions=[])), good[1]], "bad_field"
    pos = list(good)
    pos[3] = np.ones(5, dtype=np.float32).tobytes()  # log-probs must be <= 0
    yield "positive logprob", pos, "bad_logprob"
    yield "arrays on simple msg", encode(Hello("a", "hf", "m", 1)) + [b"x"], "bad_frame"


@pytest.mark.parametrize("name,frames,reason", list(_bad_cases()), ids=[c[0] for c in _bad_cases()])
def test_malformed_raises_one_typed_error(name, frames, reason):
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.reason == reason


def test_limits_are_enforced():
    frames = encode(_traj(n=3, length=50))
    with pytest.raises(ProtocolError, match="too_large"):
        decode(frames, Limits(max_tokens_per_seq=10))
    with pytest.raises(ProtocolError, match="too_large"):
        decode(frames, Limits(max_seqs_per_message=2))
    with pytest.raises(ProtocolError, match="too_large"):
        decode(frames, Limits(max_message_bytes=100))


def test_random_bytes_never_raise_anything_but_protocol_error():
    rng = np.random.default_rng(1)
    good = [bytes(f) for f in encode(_traj())]
    for _ in range(300):
        frames = list(good)
        i = int(rng.integers(len(frames)))
        b = bytearray(frames[i])
        for _ in range(int(rng.integers(1, 6))):
            if b:
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        frames[i] = bytes(b)
        try:
            decode(frames)
        except ProtocolError:
            pass
