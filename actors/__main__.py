"""``python -m actors --n N --learner tcp://HOST:5555 [--engine hf|vllm] [--model DIR]``

Starts N actor processes that generate for the learner at ``--learner``,
restarts one that crashes (with backoff) while the others go on, and forwards
SIGTERM. Checks the model path first, so that a typo is one readable line, not
N tracebacks; the learner is waited for, whichever starts first.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import sys
import time

from actors.config import ActorConfig
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


class Launcher:
    """N actor processes; one that crashes is restarted with backoff while the others go on.
    An actor that exits 0 is done (the run is over, or it was told to stop)."""

    def __init__(self, cfg: ActorConfig):
        from actors.actor import run_process

        self.cfg, self.target = cfg, run_process
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/zmq state
        self.procs: dict[int, mp.Process] = {}
        self.restarts = {i: 0 for i in range(cfg.n)}
        self.due: dict[int, float] = {}  # index -> when to restart it
        self.stopping = False
        self.failed = False  # an actor failed for good: the launcher exits 2 in the end

    def start(self, i: int) -> None:
        p = self.ctx.Process(target=self.target, args=(self.cfg, i), name=f"actor{i}")
        p.start()
        self.procs[i] = p

    def run(self) -> int:
        for i in range(self.cfg.n):
            self.start(i)
        while self.procs or self.due:
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
        return 2 if self.failed else 0

    def terminate(self, signum=None, frame=None) -> None:
        """SIGTERM/SIGINT: each actor hands its leases back and exits 0."""
        self.stopping = True
        for p in self.procs.values():
            if p.exitcode is None:
                p.terminate()


def main(argv=None) -> int:
    import signal

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
