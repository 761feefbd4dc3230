"""ZeroMQ sockets with the project's limits and conventions (DESIGN.md section 3).

The learner binds a ROUTER (actors' requests) and a PUB (version
announcements); actors connect a DEALER and a SUB. Messages go through
``common.protocol`` and array frames are sent without copying.

CURVE (optional, ``--curve-dir``): binding sockets are CURVE servers, connecting
ones CURVE clients (keys from ``common.keys``). A server's context must run a
ZAP handler (``start_authenticator``) *before* its sockets bind: libzmq accepts
every CURVE client when no handler answers, so the order is what makes the
``authorized/`` folder binding. A client whose key is not authorised fails the
handshake and never gets a message, not even an error. The handler sets each
message's ``User-Id`` property to the client's public key (Z85); see
``peer_key``.
"""
from __future__ import annotations

import logging

import zmq
from zmq.auth.thread import ThreadAuthenticator

from common import protocol
from common.keys import ClientKeys, ServerKeys
from common.protocol import DEFAULT_LIMITS, Limits

log = logging.getLogger("common.transport")


def _base(ctx: zmq.Context, kind: int, limits: Limits) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    # zmq drops (and disconnects) a peer whose message exceeds this before we ever see it.
    s.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    return s


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """ZAP handler for ``ctx`` accepting the CURVE public keys in ``keys.authorized``.

    Call before binding any CURVE server socket on ``ctx``; stop it before ``ctx.destroy``."""
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("common.transport.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.authorized))
    log.info("CURVE on: accepting the client keys in %s", keys.authorized)
    return auth


def _curve_server(s: zmq.Socket, keys: ServerKeys | None) -> None:
    if keys is not None:
        s.curve_secretkey = keys.secret
        s.curve_publickey = keys.public
        s.curve_server = True


def _curve_client(s: zmq.Socket, keys: ClientKeys | None) -> None:
    if keys is not None:
        s.curve_secretkey = keys.secret
        s.curve_publickey = keys.public
        s.curve_serverkey = keys.server_public


def router(ctx: zmq.Context, bind: str, limits: Limits = DEFAULT_LIMITS, curve: ServerKeys | None = None) -> zmq.Socket:
    s = _base(ctx, zmq.ROUTER, limits)
    s.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to a vanished peer are dropped, not raised
    _curve_server(s, curve)
    s.bind(bind)
    return s


def dealer(ctx: zmq.Context, connect: str, identity: str, limits: Limits = DEFAULT_LIMITS,
           curve: ClientKeys | None = None) -> zmq.Socket:
    s = _base(ctx, zmq.DEALER, limits)
    s.setsockopt(zmq.IDENTITY, identity.encode())
    _curve_client(s, curve)
    s.connect(connect)
    return s


def publisher(ctx: zmq.Context, bind: str, limits: Limits = DEFAULT_LIMITS, curve: ServerKeys | None = None) -> zmq.Socket:
    s = _base(ctx, zmq.PUB, limits)
    _curve_server(s, curve)
    s.bind(bind)
    return s


def subscriber(ctx: zmq.Context, connect: str, limits: Limits = DEFAULT_LIMITS,
               curve: ClientKeys | None = None) -> zmq.Socket:
    s = _base(ctx, zmq.SUB, limits)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    _curve_client(s, curve)
    s.connect(connect)
    return s


def peer_key(frame: zmq.Frame) -> str:
    """The CURVE public key (Z85) that sent ``frame``, as the ZAP handler vouched for it.

    Only for frames received with ``copy=False`` on a CURVE server socket; raises
    zmq.ZMQError when the message carries no User-Id (CURVE off)."""
    return frame.get("User-Id")


def bound_endpoint(sock: zmq.Socket, host: str) -> str:
    """The connectable address of a socket bound to tcp://*:port (port 0 picks one)."""
    port = sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
    return f"tcp://{host}:{port}"


ZERO_COPY_BYTES = zmq.COPY_THRESHOLD
"""Frames this size or larger are sent without copying; smaller ones are copied."""
_MORE = int(zmq.SNDMORE)  # a plain int: flag arithmetic on pyzmq's enums costs microseconds a frame


def send(sock: zmq.Socket, msg, identity: bytes | None = None) -> None:
    frames = protocol.encode(msg)
    if identity is not None:
        frames = [identity] + frames
    send_frames(sock, frames)


def send_frames(sock: zmq.Socket, frames: list) -> None:
    """``sock.send_multipart(frames, copy=False)``, minus its per-frame overhead (bench/transport.py).

    Under its copy threshold pyzmq copies a frame even with copy=False, after building a
    zmq.Frame (and a release hook) for it: several times the cost of the copy. A trajectory
    group is many small frames (two per completion), so small frames are copied outright and
    only large ones go without copying. ``frames`` are bytes or byte memoryviews."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, 0 if i == last else _MORE, copy=len(f) < ZERO_COPY_BYTES)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """One multipart message as zmq.Frames (not copied). Raises zmq.Again with NOBLOCK when
    nothing is waiting; the rest of a message that has begun never blocks."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:  # read from the frame: cheaper than getsockopt(RCVMORE) a frame
        frame = sock.recv(0, copy=False)
        frames.append(frame)
    return frames


def recv(sock: zmq.Socket, timeout_s: float, limits: Limits = DEFAULT_LIMITS):
    """Next message on a DEALER/SUB socket, or None after ``timeout_s``."""
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return protocol.decode(recv_frames(sock), limits)
