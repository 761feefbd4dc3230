"""``python -m learner --gpus N [--config FILE] [--max-steps K] [--metrics-port P] [--set key=value ...]``

Trains with FlowRL (or a baseline) on the groups actors stream in. ``--gpus 0``
trains in this process on the CPU; ``--gpus N`` starts N ranks (one per GPU,
or N CPU ranks over gloo when there is no CUDA). Always through DeepSpeed.

Exit codes (common/exitcodes.py): 0 the run is over; 143 stopped by SIGTERM
before that (step finished, checkpoint written: ``--resume auto`` continues);
2 a bad config, model or port, in one line; anything else a crash.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time

from common import exitcodes
from common.config import ConfigError, build, load, parse_override
from learner.config import LearnerConfig

_FLAGS = {"model": str, "max_steps": int, "metrics_port": int, "actors": int, "bind": str, "run_dir": str,
          "tasks": str, "weight_port": int, "pub_bind": str, "curve_dir": str, "resume": str,
          "checkpoint_every": int, "min_actors": int}


def parse_args(argv=None) -> tuple[LearnerConfig, int]:
    p = argparse.ArgumentParser(prog="python -m learner", description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=0, help="ranks to run (0: one CPU process)")
    p.add_argument("--config", help="TOML file with LearnerConfig fields ([sampling], [algo] tables)")
    for name, typ in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, help=f"LearnerConfig.{name}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set algo.beta=10 --set sampling.n=8")
    p.add_argument("--config-json", help=argparse.SUPPRESS)  # internal: a rank started by the launcher
    a = p.parse_args(argv)
    if a.gpus < 0:
        raise ConfigError("--gpus: must be >= 0")
    if a.config_json:
        return build(LearnerConfig, json.loads(a.config_json)), a.gpus
    overrides = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    overrides.update({".".join(k): v for k, v in map(parse_override, a.set)})
    cfg = load(LearnerConfig, a.config, overrides)
    cfg.validate(max(a.gpus, 1))
    return cfg, a.gpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: LearnerConfig, world: int) -> int:
    """One subprocess per rank; the first to fail takes the others down. SIGTERM is passed
    on to every rank: rank 0 then stops all of them after the step in progress, and each
    exits TERMINATED (so does the launcher, once all have)."""
    import signal

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    blob = json.dumps(dataclasses.asdict(cfg))
    procs = []
    for r in range(world):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, "-m", "learner", "--gpus", str(world),
                                       "--config-json", blob], env=e))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, forward)
    # A rank that stopped on SIGTERM is not a failure: the others are finishing their step
    # and checkpoint too. One killed by a signal (before its handler was installed) counts as
    # 128 + N, as a shell would report it.
    ended = (exitcodes.OK, exitcodes.TERMINATED)
    try:
        while True:
            codes = [None if p.poll() is None else exitcodes.from_returncode(p.returncode) for p in procs]
            bad = [c for c in codes if c not in (None, *ended)]
            if bad or None not in codes:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        bad = [exitcodes.INTERRUPTED]
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait()
    if bad:
        return bad[0]
    return max(exitcodes.from_returncode(p.returncode) for p in procs)  # TERMINATED if any rank stopped


def main(argv=None) -> int:
    from common.models import EMBEDDED, ModelLoadError, embedded_gguf, model_source

    try:
        cfg, gpus = parse_args(argv)
        cfg.check_inputs()  # the task file and resume checkpoint: before heavy imports
        embedded_gguf() if cfg.model == EMBEDDED else model_source(cfg.model)
    except (ConfigError, ModelLoadError) as e:
        print(f"learner: error: {e}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 0)) or max(gpus, 1)
    if world > 1 and "RANK" not in os.environ:
        return launch(cfg, world)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s learner{rank} %(levelname)s %(message)s")
    import zmq

    from learner.worker import run

    try:
        finished = run(cfg, rank, world)
    except (ModelLoadError, ConfigError) as e:
        print(f"learner: error: {e}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        print(f"learner: error: cannot open a socket: {e} (is another learner running on these ports?)",
              file=sys.stderr)
        return 2
    return exitcodes.OK if finished else exitcodes.TERMINATED


if __name__ == "__main__":
    sys.exit(main())
