"""CURVE key material for the ZeroMQ sockets (DESIGN.md section 4).

    python -m common.keys DIR [--force]

writes, in pyzmq's ``zmq.auth`` certificate format:

    DIR/server.key            server public key   (actors read it to know whom they talk to)
    DIR/server.key_secret     server key pair     (learner ROUTER + PUB, sandbox service)
    DIR/client.key            client public key
    DIR/client.key_secret     client key pair     (actors)
    DIR/authorized/client.key the public keys a server accepts (one file per client key)

Each role reads only what it needs: servers ``server.key_secret`` and
``authorized/``; clients ``client.key_secret`` and ``server.key``. More clients
(one key per actor pod, say) are added by dropping their public ``*.key``
files into ``authorized/``; servers load that folder at start.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

SERVER_FILES = ("server.key_secret", "authorized")
"""What a server role (learner, sandbox service) needs from the key directory."""
CLIENT_FILES = ("client.key_secret", "server.key")
"""What a client role (actor) needs from the key directory."""
ALL_FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key")


class KeyFileError(ValueError):
    """Key material missing or unreadable; the message names the file."""


@dataclass(frozen=True, repr=False)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path
    """Folder of the public keys (``*.key``) this server accepts."""

    def __repr__(self) -> str:  # never print a secret into a log
        return f"ServerKeys(public={self.public.decode()}, authorized={self.authorized})"


@dataclass(frozen=True, repr=False)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes

    def __repr__(self) -> str:
        return f"ClientKeys(public={self.public.decode()}, server_public={self.server_public.decode()})"


def missing(directory: str | os.PathLike, needed: tuple[str, ...]) -> list[str]:
    """The entries of ``needed`` that ``directory`` lacks (all of them if it does not exist)."""
    d = Path(directory)
    return [name for name in needed if not (d / name).exists()]


def _pair(path: Path) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise KeyFileError(f"{path}: no such key file (create keys with: python -m common.keys DIR)")
    public, secret = zmq.auth.load_certificate(path)
    if not public or not secret:
        raise KeyFileError(f"{path}: not a zmq.auth secret certificate (needs public-key and secret-key)")
    return public, secret


def _public(path: Path) -> bytes:
    if not path.is_file():
        raise KeyFileError(f"{path}: no such key file (create keys with: python -m common.keys DIR)")
    public, _ = zmq.auth.load_certificate(path)
    if not public:
        raise KeyFileError(f"{path}: not a zmq.auth certificate (no public-key)")
    return public


def load_server(directory: str | os.PathLike) -> ServerKeys:
    d = Path(directory)
    public, secret = _pair(d / "server.key_secret")
    authorized = d / "authorized"
    if not authorized.is_dir():
        raise KeyFileError(f"{authorized}: no such folder of authorised client keys")
    return ServerKeys(public, secret, authorized)


def load_client(directory: str | os.PathLike) -> ClientKeys:
    d = Path(directory)
    public, secret = _pair(d / "client.key_secret")
    return ClientKeys(public, secret, _public(d / "server.key"))


def write(directory: str | os.PathLike, force: bool = False) -> list[Path]:
    """Create the server and client key pairs and ``authorized/client.key``; returns the files.

    Refuses to overwrite existing keys unless ``force``: replacing a key silently
    locks out every peer that still holds the old one."""
    d = Path(directory)
    existing = [name for name in ALL_FILES if (d / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{d}: {', '.join(existing)} already exist; pass --force to replace them")
    d.mkdir(parents=True, exist_ok=True)
    (d / "authorized").mkdir(exist_ok=True)
    for name in ("server", "client"):
        _, secret_file = zmq.auth.create_certificates(d, name)
        os.chmod(secret_file, 0o600)  # pyzmq writes it with the umask's mode
    shutil.copyfile(d / "client.key", d / "authorized" / "client.key")
    return [d / name for name in ALL_FILES]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.keys", description="Write CURVE keys for FlowRL's ZeroMQ sockets.")
    p.add_argument("dir", help="folder to write the keys into (created if absent)")
    p.add_argument("--force", action="store_true", help="replace keys that already exist")
    a = p.parse_args(argv)
    try:
        files = write(a.dir, a.force)
    except FileExistsError as e:
        print(f"common.keys: error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
