"""python -m reward_sandbox: serve scoring requests over ZeroMQ.

    python -m reward_sandbox --bind tcp://*:5557 --workers 8 --metrics-port 9105

See service.py for the protocol and THREAT_MODEL.md for what the sandbox
guarantees on the tier it finds (logged at start and exported as
flowrl_sandbox_isolation_tier).
"""

import argparse
import logging
import signal

from .service import SandboxService, ServiceConfig


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m reward_sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--bind", default="tcp://*:5557")
    p.add_argument("--workers", type=int, default=4, help="parallel sandboxed programs")
    p.add_argument("--math-workers", type=int, default=2)
    p.add_argument("--max-inflight", type=int, default=64)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--tier", default="auto", choices=["auto", "bwrap", "landlock", "rlimit"])
    p.add_argument("--curve-dir", default="", help="key folder from python -m common.keys: turns CURVE on")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ServiceConfig(bind=a.bind, workers=a.workers, math_workers=a.math_workers, max_inflight=a.max_inflight,
                        metrics_port=a.metrics_port, tier=a.tier, curve_dir=a.curve_dir)
    svc = SandboxService(cfg)
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    signal.signal(signal.SIGINT, lambda *_: svc.stop())
    try:
        svc.serve()
    finally:
        svc.close()


if __name__ == "__main__":
    main()
