"""Math verification worker: one killable process, spoken to over pipes.

Started by reward_sandbox/math_pool.py as ``python -I _math_worker.py MEM_MB``
(isolated mode: no env vars, no cwd on sys.path; this file imports only the
standard library and math_verify). It caps its own address space, imports
math_verify, prints a ready line, then answers one JSON request per line:

    {"pred": "<answer latex>", "gold": "<answer latex>", "timeout": 3}
    -> {"ok": true, "equal": false}

The parent enforces the real deadline by killing this process; math-verify's
own signal.alarm timeout (which works here because we are a main thread) is a
first line only, since some inputs hang inside C code it cannot interrupt.
"""

import json
import os
import resource
import sys


def _limit_memory(mb: int) -> None:
    limit = mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    mem_mb = int(sys.argv[1])
    # Keep the protocol channel private: anything a library prints goes to
    # stderr, never into our reply stream.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _limit_memory(mem_mb)
    from math_verify import parse, verify  # heavy import, after the cap

    out.write('{"ready": true}\n')
    for line in sys.stdin:
        req = json.loads(line)
        t = max(1, int(req.get("timeout", 3)))
        try:
            gold = parse("\\boxed{" + req["gold"] + "}", parsing_timeout=t)
            if not gold:
                gold = parse(req["gold"], parsing_timeout=t)
            pred = parse("\\boxed{" + req["pred"] + "}", parsing_timeout=t)
            equal = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=t))
            reply = {"ok": True, "equal": equal}
        except MemoryError:
            reply = {"ok": False, "error": "memory"}
        except (ValueError, TypeError, ArithmeticError, RecursionError, TimeoutError) as exc:
            # math_verify reports its own timeouts and parse failures this way
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
