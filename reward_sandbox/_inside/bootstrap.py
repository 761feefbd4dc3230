"""Run the untrusted program, in a process that is already confined.

Two ways in, same behaviour (that of ``python prog.py``):

- ``run(mode)``: called in a child of the fork server (forkserver.py), an
  interpreter that never held any job data, so there is nothing to find in
  its memory but this program. The fast path.
- ``python -I -S bootstrap.py MODE``: a fresh interpreter (the supervisor's
  ``fresh_interpreter`` option), for when not even the fork server's start-up
  state should be shared between runs.

The program is ``prog.py`` in the current (fresh) directory. MODE ``exec``
runs it as ``__main__``; ``serve`` runs it and then answers the judge's calls
to its functions over fds 3 (requests) and 4 (replies), see judge.py and
wire.py. Nothing the program prints reaches the judge. A MemoryError that
reaches the top exits with MEMORY_EXIT so the supervisor can say "memory".
"""

import os
import sys

MEMORY_EXIT = 201


def _run_program():
    import builtins
    import types

    with open("prog.py", "rb") as f:
        src = f.read()
    code = compile(src, "prog.py", "exec")
    main = types.ModuleType("__main__")
    main.__file__ = os.path.abspath("prog.py")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = ["prog.py"]
    exec(code, main.__dict__)
    return main.__dict__


def _serve(namespace, rfd, wfd):
    import wire

    names = {}
    for k, v in list(namespace.items()):
        if k.startswith("__"):
            continue
        if type(v).__name__ == "module":
            names[k] = "module:" + getattr(v, "__name__", "")
        elif callable(v):
            names[k] = "call"
    out = os.fdopen(wfd, "wb", buffering=0)
    out.write(wire.dumps({"ready": True, "names": names}))
    for line in os.fdopen(rfd, "rb"):
        req = wire.loads(line)
        rid = req.get("id")
        try:
            fn = namespace[req["name"]]
            args = wire.decode(req["args"])
            kwargs = wire.decode(req.get("kwargs", {"d": []}))
            if type(args) is not list or type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
                raise wire.WireError("malformed call")
            result = fn(*args, **kwargs)
            line = wire.dumps({"id": rid, "value": wire.encode(result)})
        except (wire.WireError, RecursionError) as exc:
            line = wire.dumps({"id": rid, "exc": "TypeError", "msg": f"cannot return this value: {exc}"[:500]})
        except Exception as exc:  # the program's own exception: forward its type to the judge
            line = wire.dumps({"id": rid, "exc": type(exc).__name__, "msg": str(exc)[:500]})
        out.write(line)


def _print_traceback(exc):
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "prog.py":
        tb = tb.tb_next  # hide our own frames, as python prog.py would
    traceback.print_exception(type(exc), exc, tb)


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run(mode):
    """Run prog.py like the interpreter would, then exit; never returns."""
    code = 0
    if mode == "serve":
        # the judge's channel moves off the program's obvious fds
        rfd, wfd = os.dup(3), os.dup(4)
        os.close(3)
        os.close(4)
    try:
        namespace = _run_program()
        if mode == "serve":
            sys.stdout.flush()
            _serve(namespace, rfd, wfd)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except MemoryError:
        code = MEMORY_EXIT
        try:
            sys.stderr.write("MemoryError\n")
        except MemoryError:
            pass
    except BaseException as exc:  # what the interpreter does with an uncaught exception
        code = 1
        try:
            _print_traceback(exc)
        except MemoryError:
            code = MEMORY_EXIT
    try:
        import threading

        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()  # the interpreter waits for non-daemon threads too
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except MemoryError:
        code = MEMORY_EXIT
    except (OSError, ValueError):
        pass  # stdout closed by the program: nothing left to flush
    os._exit(code)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    run(sys.argv[1])
