"""Dedicated uids for sandbox slots, unique across processes on this host.

When we may switch uid (root in a container), each worker slot runs its
candidate and its judge under their own uid pair. A uid is only a boundary if
nobody else uses it, including another Runner in another process (several
actors on one node), so slots claim uids with an flock on a lock file per uid
pair; the kernel drops the lock when the owner dies.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

LOCK_DIR = "/tmp/flowrl-sandbox-uids"
MAX_PAIRS = 4096


@dataclass(frozen=True)
class UidPair:
    candidate: int
    judge: int
    lock_fd: int


def claim_pairs(n: int, base: int) -> list[UidPair]:
    """Claim n unused uid pairs at or above base; raises RuntimeError if none left."""
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    got: list[UidPair] = []
    for j in range(MAX_PAIRS):
        if len(got) == n:
            break
        uid = base + 2 * j
        fd = os.open(os.path.join(LOCK_DIR, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        got.append(UidPair(candidate=uid + 1, judge=uid, lock_fd=fd))
    if len(got) < n:
        release(got)
        raise RuntimeError(f"could not claim {n} sandbox uid pairs from {base}")
    return got


def release(pairs: list[UidPair]) -> None:
    for p in pairs:
        try:
            os.close(p.lock_fd)
        except OSError:
            pass
