"""Process helpers for integration tests: free ports, launching roles, reading /metrics."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.metrics import parse_prometheus_text

REPO = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def consecutive_free_ports(n: int) -> int:
    for _ in range(100):
        base = free_ports(1)[0]
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no consecutive free ports")


def start(args: list[str], log: Path, threads: int = 1) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def metrics(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return parse_prometheus_text(r.read().decode())
    except OSError:
        return None


def wait_for(pred, timeout_s: float, what: str, procs=(), logs=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        for p, log in zip(procs, logs):
            if p.poll() not in (None, 0):
                raise AssertionError(f"{what}: {p.args[2]} exited {p.returncode}:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.3)
    tails = "\n".join(f"--- {log}\n{Path(log).read_text()[-3000:]}" for log in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")
