"""The judge: runs the reference tests against the candidate, out of its reach.

Runs in its own confined process (forked by supervisor.py). The candidate
program lives in another process; every function of it that the tests use is
a Proxy that sends the arguments over a pipe and decodes the reply into
builtin values (wire.py). So the candidate cannot patch the tests, override
``__eq__``, print a fake verdict, or exit early to look successful: the
verdict is what the judge observed, reported on a pipe only the judge holds.

Tests are the top-level statements that contain an ``assert`` and use the
candidate (in ``check(candidate)`` when an entry point is given, HumanEval
style; else at module level, MBPP style). Each one is wrapped so that a
failure is recorded and the next one still runs; a setup statement that
raises ends the run with the remaining tests failed. Code with no such
statement counts as one test: it passes if it runs through.

Reports, one JSON line each: {"total": n}, then {"t": i, "ok": bool} per
test, then {"done": true}.
"""

import ast
import builtins
import importlib
import os
import sys

import wire

REPORT = "__flowrl_report__"
MAX_NAMES = 10_000


class CandidateGone(RuntimeError):
    pass


class Channel:
    def __init__(self, req_fd, rep_fd):
        self.w = os.fdopen(req_fd, "wb", buffering=0)
        self.r = os.fdopen(rep_fd, "rb")
        self.next_id = 0
        self.max_line = 16 * 1024 * 1024
        self.gone = False

    def recv(self):
        line = self.r.readline(self.max_line + 1)
        if not line:
            self.gone = True
            raise CandidateGone("the candidate program exited")
        if len(line) > self.max_line:
            raise CandidateGone("the candidate sent an oversized reply")
        return wire.loads(line)

    def call(self, name, args, kwargs):
        self.next_id += 1
        rid = self.next_id
        msg = {"id": rid, "name": name, "args": wire.encode(list(args)), "kwargs": wire.encode(dict(kwargs))}
        try:
            self.w.write(wire.dumps(msg))
        except BrokenPipeError as exc:
            self.gone = True
            raise CandidateGone("the candidate program exited") from exc
        reply = self.recv()
        if not isinstance(reply, dict) or reply.get("id") != rid:
            raise CandidateGone("the candidate answered out of turn")
        if "exc" in reply:
            exc_type = getattr(builtins, str(reply["exc"]), None)
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                exc_type = RuntimeError
            raise exc_type(str(reply.get("msg", ""))[:500])
        return wire.decode(reply.get("value"))


class Proxy:
    """Stands in for one function of the candidate program."""

    def __init__(self, channel, name):
        self._channel = channel
        self._name = name
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._name, args, kwargs)

    def __repr__(self):
        return f"<candidate function {self._name}>"


def _uses(node, names):
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _has_assert(node):
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _wrap(stmts, names, counter):
    """Wrap each test statement of stmts in try/except that reports it."""
    out = []
    for s in stmts:
        if _has_assert(s) and _uses(s, names) and not isinstance(s, (ast.FunctionDef, ast.ClassDef)):
            k = counter[0]
            counter[0] += 1
            report = lambda ok: ast.Expr(ast.Call(ast.Name(REPORT, ast.Load()), [ast.Constant(k), ast.Constant(ok)], []))
            handler = ast.ExceptHandler(ast.Name("Exception", ast.Load()), None, [report(False)])
            out.append(ast.Try([s], [handler], [report(True)], []))
        else:
            out.append(s)
    return out


def instrument(test_code, entry_point, candidate_names):
    """Return (code object, number of tests)."""
    tree = ast.parse(test_code, "<tests>")
    counter = [0]
    if entry_point:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "check":
                params = {a.arg for a in node.args.args}
                node.body = _wrap(node.body, params | set(candidate_names), counter)
    else:
        tree.body = _wrap(tree.body, set(candidate_names), counter)
    ast.fix_missing_locations(tree)
    return compile(tree, "<tests>", "exec"), counter[0]


def run(test_code, entry_point, req_fd, rep_fd, result_fd):
    out = os.fdopen(result_fd, "wb", buffering=0)
    channel = Channel(req_fd, rep_fd)
    try:
        hello = channel.recv()
    except (CandidateGone, wire.WireError):
        hello = {}
    names = hello.get("names") if isinstance(hello, dict) and hello.get("ready") is True else None
    if not isinstance(names, dict):
        names = {}
    try:
        code, n_tests = instrument(test_code, entry_point, names)
    except SyntaxError as exc:
        out.write(wire.dumps({"total": 1, "error": f"test code does not compile: {exc}"}))
        return
    total = max(1, n_tests)
    out.write(wire.dumps({"total": total}))
    if not hello:
        out.write(wire.dumps({"done": True, "error": "the candidate program did not start", "candidate_gone": True}))
        return
    if entry_point and names.get(entry_point) != "call":
        out.write(wire.dumps({"done": True, "error": f"the program defines no function {entry_point!r}"}))
        return

    def report(k, ok):
        out.write(wire.dumps({"t": k, "ok": bool(ok)}))

    ns = {"__name__": "__tests__", "__builtins__": builtins, REPORT: report}
    for name, kind in list(names.items())[:MAX_NAMES]:
        if not isinstance(name, str) or not isinstance(kind, str) or not name.isidentifier():
            continue
        if kind == "call":
            ns[name] = Proxy(channel, name)
        elif kind.startswith("module:"):
            # A module the program imported at top level, which the tests may
            # use without importing it (HumanEval's prompts do). The judge
            # imports its own copy, and only under its own name, so the
            # candidate cannot slip the tests a different module.
            mod = kind[7:]
            if mod.split(".")[0] in sys.stdlib_module_names and mod.split(".")[-1] == name:
                try:
                    ns[name] = importlib.import_module(mod)
                except ImportError:
                    pass  # not importable here: tests using it fail
    error = None
    try:
        exec(code, ns)
        if entry_point:
            ns["check"](Proxy(channel, entry_point))
    except Exception as exc:  # a failing test or setup: recorded as failure, not a crash
        error = f"{type(exc).__name__}: {exc}"[:500]
    if n_tests == 0 and error is None:
        report(0, True)
    out.write(wire.dumps({"done": True, "error": error, "candidate_gone": channel.gone}))
