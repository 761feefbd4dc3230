"""ZeroMQ sockets with the project's limits and conventions (DESIGN.md section 3).

The learner binds a ROUTER (actors' requests) and a PUB (version
announcements); actors connect a DEALER and a SUB. Messages go through
``common.protocol`` and array frames are sent without copying. CURVE
authentication is not implemented yet (see README, "Not yet").
"""
from __future__ import annotations

import zmq

from common import protocol
from common.protocol import DEFAULT_LIMITS, Limits


def _base(ctx: zmq.Context, kind: int, limits: Limits) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    # zmq drops (and disconnects) a peer whose message exceeds this before we ever see it.
    s.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    return s


def router(ctx: zmq.Context, bind: str, limits: Limits = DEFAULT_LIMITS) -> zmq.Socket:
    s = _base(ctx, zmq.ROUTER, limits)
    s.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to a vanished peer are dropped, not raised
    s.bind(bind)
    return s


def dealer(ctx: zmq.Context, connect: str, identity: str, limits: Limits = DEFAULT_LIMITS) -> zmq.Socket:
    s = _base(ctx, zmq.DEALER, limits)
    s.setsockopt(zmq.IDENTITY, identity.encode())
    s.connect(connect)
    return s


def publisher(ctx: zmq.Context, bind: str, limits: Limits = DEFAULT_LIMITS) -> zmq.Socket:
    s = _base(ctx, zmq.PUB, limits)
    s.bind(bind)
    return s


def subscriber(ctx: zmq.Context, connect: str, limits: Limits = DEFAULT_LIMITS) -> zmq.Socket:
    s = _base(ctx, zmq.SUB, limits)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(connect)
    return s


def bound_endpoint(sock: zmq.Socket, host: str) -> str:
    """The connectable address of a socket bound to tcp://*:port (port 0 picks one)."""
    port = sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
    return f"tcp://{host}:{port}"


def send(sock: zmq.Socket, msg, identity: bytes | None = None) -> None:
    frames = protocol.encode(msg)
    if identity is not None:
        frames = [identity] + frames
    sock.send_multipart(frames, copy=False)


def recv_frames(sock: zmq.Socket) -> list:
    return sock.recv_multipart(copy=False)


def recv(sock: zmq.Socket, timeout_s: float, limits: Limits = DEFAULT_LIMITS):
    """Next message on a DEALER/SUB socket, or None after ``timeout_s``."""
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return protocol.decode(recv_frames(sock), limits)
