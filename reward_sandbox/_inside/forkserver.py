"""Fork server: the clean parent of every candidate process of a slot.

Forked by supervisor.py at its start, before it reads any job, and never
given job data afterwards: it receives only a confinement spec and file
descriptors (SCM_RIGHTS over a socketpair), so a candidate forked from it
finds nothing of other runs, and nothing of the tests, in its memory.

Protocol on the socket (SOCK_SEQPACKET, one JSON object per message):
  supervisor -> server: {"spec": {...}, "workdir": ..., "mode": ..., "fresh": bool, "python": ...}
                        with fds [stdin, stdout, stderr] (+ [req_r, rep_w] for "serve")
  server -> supervisor: {"pid": n}, later {"exit": n, "status": wait status}

The child: new session, the fds at 0..4, everything else closed, chdir to its
work dir, confine.confine(spec), parent-death signal, then bootstrap.run()
in-process (or execve of a fresh interpreter when "fresh").
"""

import json
import os
import selectors
import signal
import socket

import bootstrap
import confine
import wire  # noqa: F401 - what serve-mode candidates use, loaded once

# Standard-library modules most programs import (HumanEval prompts start with
# "from typing import List"), loaded once here so that each forked candidate
# does not pay for them. Only deterministic, stateless modules: random would
# be reseeded after fork, but there is no need to share it at all.
PRELOAD = ("typing", "re", "math", "collections", "itertools", "functools", "string", "heapq", "bisect", "copy")
for _name in PRELOAD:
    __import__(_name)

SETUP_FAILED_EXIT = 202
MAX_MSG = 1 << 16


def _child(req, fds):
    try:
        os.setsid()
        targets = list(range(len(fds)))
        for fd, dst in zip(confine.move_high(fds), targets):
            os.dup2(fd, dst, inheritable=True)
        os.closerange(len(fds), 65536)
        os.chdir(req["workdir"])
        confine.confine(req["spec"])
        # after confine(): a uid change clears the parent-death signal
        confine.set_pdeathsig(signal.SIGKILL)
        if req.get("fresh"):
            here = os.path.dirname(os.path.abspath(__file__))
            os.execve(req["python"], [req["python"], "-I", "-S", os.path.join(here, "bootstrap.py"), req["mode"]], {})
        os.environ.clear()
        bootstrap.run(req["mode"])
    except BaseException as exc:  # anything at all: the program must not run unconfined
        try:
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    os._exit(SETUP_FAILED_EXIT)


def serve(sock):
    """Loop until the supervisor closes its end."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 8)
                if not msg:
                    return
                req = json.loads(msg)
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    _child(req, fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                sel.register(pidfd, selectors.EVENT_READ, pid)
                sock.send(json.dumps({"pid": pid}).encode())
            else:
                pid = key.data
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                sock.send(json.dumps({"exit": pid, "status": status}).encode())


def start():
    """Fork the server; returns (its pid, the supervisor's socket end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1):
            os.dup2(devnull, fd)  # never hold the supervisor's job channel
        os.close(devnull)
        keep = theirs.fileno()
        for fd in range(3, 1024):
            if fd != keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        code = 0
        try:
            serve(theirs)
        except (OSError, ValueError) as exc:  # the supervisor went away mid-message
            code = 1
            os.write(2, f"fork server stopped: {exc}\n".encode())
        os._exit(code)
    theirs.close()
    return pid, ours
