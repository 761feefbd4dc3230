"""``python -m actors --n N --learner tcp://HOST:5555 [--engine hf|vllm] [--model DIR]``

Starts N actor processes that generate for the learner at ``--learner``.
Checks the model path and that the learner answers before starting them, so
that a typo or a dead address is one readable line, not N tracebacks.
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
    import os

    import zmq

    from common import transport
    from common.keys import load_client
    from common.models import model_source
    from common.protocol import Error, Heartbeat

    model_source(cfg.model)  # raises ModelLoadError with a readable line
    ctx = zmq.Context()
    curve = load_client(cfg.curve_dir) if cfg.curve_dir else None
    sock = transport.dealer(ctx, cfg.learner, f"probe-{os.getpid()}", curve=curve)
    transport.send(sock, Heartbeat(actor_id="probe", policy_version=0, weight_seq=0))
    reply = transport.recv(sock, cfg.connect_timeout_s)
    ctx.destroy(linger=0)
    if reply is None:
        raise ConnectionError(f"cannot reach the learner at {cfg.learner} within {cfg.connect_timeout_s:.0f} s")
    if isinstance(reply, Error):
        raise ConnectionError(f"learner at {cfg.learner} refused: {reply.reason}: {reply.detail}")


def main(argv=None) -> int:
    from common.models import ModelLoadError

    try:
        cfg = parse_args(argv)
        _preflight(cfg)
    except (ConfigError, ModelLoadError, ConnectionError) as e:
        print(f"actors: error: {e}", file=sys.stderr)
        return 2
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/zmq state
    from actors.actor import run_process

    procs = [ctx.Process(target=run_process, args=(cfg, i), name=f"actor{i}") for i in range(cfg.n)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed:  # one dead actor takes the launcher down loudly rather than limping on
                for p in procs:
                    p.terminate()
                return failed[0].exitcode if failed[0].exitcode > 0 else 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
    return max(p.exitcode for p in procs)


if __name__ == "__main__":
    sys.exit(main())
