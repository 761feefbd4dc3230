"""Value encoding between the candidate program and the judge.

The judge calls the candidate's functions over a pipe; arguments and return
values travel as JSON with tags for the builtin types JSON lacks. Decoding
only ever builds builtin values (exact types: no subclasses, no objects with
methods the candidate wrote), which is what stops an "always equal" return
value or an overridden __eq__ from faking a pass.

    tuple {"t": [...]}  dict {"d": [[k, v], ...]}  set {"s": [...]}
    frozenset {"f": [...]}  bytes {"b": "<hex>"}  complex {"c": [re, im]}
    range {"r": [start, stop, step]}  iterator/generator {"g": [...]}
    int of more than ~4000 digits {"x": "<hex>"} (decimal conversion of such
    ints is limited by the interpreter; hexadecimal is not)
"""

import json

MAX_DEPTH = 100
MAX_INT_DIGITS = 100_000
MAX_HEX_DIGITS = 1_000_000
_BIG_INT_BITS = 13_000  # about 3900 decimal digits, under the interpreter's 4300
_ITER_TYPES = tuple(
    type(x)
    for x in (
        iter([]), iter(()), iter(""), iter(range(0)), iter({}), iter(set()), reversed([]),
        (i for i in ()), map(abs, []), filter(None, []), zip(), enumerate([]),
        {}.keys(), {}.values(), {}.items(),
    )
)


class WireError(ValueError):
    pass


def encode(value, depth=0):
    """Builtin value -> JSON-able structure; WireError for anything else."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    t = type(value)
    if t is int and value.bit_length() > _BIG_INT_BITS:
        return {"x": format(value, "x")}
    if value is None or t is bool or t is int or t is float or t is str:
        return value
    d = depth + 1
    if t is list:
        return [encode(v, d) for v in value]
    if t is tuple:
        return {"t": [encode(v, d) for v in value]}
    if t is dict:
        return {"d": [[encode(k, d), encode(v, d)] for k, v in value.items()]}
    if t is set:
        return {"s": [encode(v, d) for v in value]}
    if t is frozenset:
        return {"f": [encode(v, d) for v in value]}
    if t is bytes or t is bytearray:
        return {"b": bytes(value).hex()}
    if t is complex:
        return {"c": [value.real, value.imag]}
    if t is range:
        return {"r": [value.start, value.stop, value.step]}
    if isinstance(value, _ITER_TYPES) and t in _ITER_TYPES:
        return {"g": [encode(v, d) for v in value]}
    raise WireError(f"cannot send a value of type {t.__name__}")


def decode(obj, depth=0):
    """JSON structure -> builtin value. Raises WireError on anything malformed."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is float or t is str:
        return obj
    if t is int:
        return obj
    d = depth + 1
    if t is list:
        return [decode(v, d) for v in obj]
    if t is not dict or len(obj) != 1:
        raise WireError("malformed value")
    (tag, body), = obj.items()
    try:
        if tag == "t":
            return tuple(decode(v, d) for v in body)
        if tag == "d":
            return {decode(k, d): decode(v, d) for k, v in body}
        if tag == "s":
            return {decode(v, d) for v in body}
        if tag == "f":
            return frozenset(decode(v, d) for v in body)
        if tag == "b":
            return bytes.fromhex(body)
        if tag == "c":
            return complex(float(body[0]), float(body[1]))
        if tag == "r":
            return range(int(body[0]), int(body[1]), int(body[2]))
        if tag == "g":
            return iter([decode(v, d) for v in body])
        if tag == "x":
            if type(body) is not str or len(body) > MAX_HEX_DIGITS:
                raise WireError("malformed big integer")
            return int(body, 16)
    except (TypeError, ValueError) as exc:  # unhashable key, bad hex, bad shape
        raise WireError(f"malformed {tag!r} value: {exc}") from exc
    raise WireError(f"unknown tag {tag!r}")


def _parse_int(text):
    if len(text) > MAX_INT_DIGITS:
        raise WireError("integer too long")
    return int(text)


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def loads(line: bytes):
    try:
        return json.loads(line, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"bad message: {exc}") from exc
