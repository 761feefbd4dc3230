"""reward_sandbox public API: run_code / run_many / code_reward / isolation,
statuses, limits validation, test-spec parsing, and the LocalScorer.

Run: .venv/bin/python -m pytest tests/unit/test_sandbox_runner.py -q
"""

import json

import pytest

import reward_sandbox
from reward_sandbox import ExecResult, LocalScorer, code_reward, isolation, run_code, run_many
from reward_sandbox.code_reward import code_results, extract_program, parse_tests
from reward_sandbox.runner import Limits, RunnerConfig


def test_isolation_is_probed_and_strongest_here():
    iso = isolation()
    assert str(iso) in ("bwrap", "landlock", "rlimit")
    assert iso.tier == str(iso)
    if iso.tier == "bwrap":
        assert "pid" in iso.namespaces and "net" in iso.namespaces
    if iso.tier in ("bwrap", "landlock"):
        assert iso.seccomp


def test_run_code_ok_with_stdin():
    r = run_code("import sys\nprint(sys.stdin.read().upper(), end='')\n", stdin="hello\n")
    assert isinstance(r, ExecResult)
    assert (r.status, r.returncode, r.stdout) == ("ok", 0, "HELLO\n")
    assert r.duration_s > 0


def test_statuses():
    assert run_code("raise ValueError('x')").status == "error"
    assert run_code("import sys\nsys.exit(3)").returncode == 3
    assert run_code("def f(:\n").status == "error"
    assert run_code("import time\ntime.sleep(5)", timeout_s=0.3).status == "timeout"
    assert run_code("x = bytearray(1 << 31)", memory_mb=128).status == "memory"
    assert run_many(["print('x' * 100)"], max_output_bytes=10)[0].status == "output_limit"
    r = run_code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert (r.status, r.returncode) == ("killed", -9)


def test_the_program_sees_a_clean_world():
    r = run_code("import os, sys\nprint(sorted(os.environ))\nprint(os.listdir('.'))\nprint(sys.path)")
    assert r.status == "ok", r.stderr
    env, listing, path = r.stdout.splitlines()
    assert env in ("[]", "['LC_CTYPE']")  # Python itself sets LC_CTYPE (PEP 538)
    assert listing == "['prog.py']"
    assert "site-packages" not in path  # stdlib only


def test_run_many_keeps_order():
    srcs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nprint({i})" for i in range(12)]
    rs = run_many(srcs, timeout_s=5.0)
    assert [r.stdout.strip() for r in rs] == [str(i) for i in range(12)]
    assert all(r.status == "ok" for r in rs)


@pytest.mark.parametrize("kwargs,field", [
    ({"timeout_s": -1}, "timeout_s"), ({"timeout_s": 0}, "timeout_s"), ({"memory_mb": -5}, "memory_mb"),
    ({"memory_mb": "512"}, "memory_mb"), ({"max_output_bytes": 0}, "max_output_bytes"),
])
def test_bad_limits_are_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        run_many(["print(1)"], **kwargs)
    with pytest.raises(ValueError, match=field):
        Limits(**kwargs)


def test_bad_runner_config():
    with pytest.raises(ValueError, match="workers"):
        RunnerConfig(workers=0)
    with pytest.raises(ValueError, match="tier"):
        RunnerConfig(tier="docker")
    with pytest.raises(TypeError, match="source"):
        run_code(b"print(1)")


def test_extract_program():
    assert extract_program("Here:\n```python\nprint(1)\n```\nand usage\n```\nx\n```") == "print(1)\n"
    assert extract_program("```\nprint(2)\n```") == "print(2)\n"
    assert extract_program("```py\na\n```\n```python\nb\n```") == "b\n"
    assert extract_program("print(3)") == "print(3)"
    assert extract_program("```python\nprint(4)\n") == "print(4)\n"  # cut off


@pytest.mark.parametrize("spec,msg", [
    ("not json", "JSON"), ("[]", "object"), ({"asserts": ""}, "asserts"), ({"cases": []}, "cases"),
    ({"asserts": "assert 1", "cases": []}, "exactly one"), ({"asserts": "assert 1", "bogus": 1}, "unknown"),
    ({"asserts": "assert 1", "entry_point": "a b"}, "entry_point"), ({"cases": [{"stdin": 1, "stdout": "x"}]}, "cases\\[0\\]"),
])
def test_bad_test_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_tests(spec)


def test_code_reward_asserts_fraction_and_strict():
    tests = {"asserts": "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == 4\n"
                        "    assert candidate(3) == 9\n    assert True\n", "entry_point": "sq"}
    assert code_reward("```python\ndef sq(x):\n    return x * x\n```", tests) == 1.0
    assert code_reward("def sq(x):\n    return x if x < 3 else 0\n", tests) == pytest.approx(1 / 3)
    assert code_reward("def sq(x):\n    return x if x < 3 else 0\n", tests, strict=True) == 0.0
    assert code_reward("def other(x):\n    return x\n", tests) == 0.0
    # module-level asserts (MBPP style) with a prefix
    mbpp = json.dumps({"asserts": "assert add(1, 2) == 3\nassert add(2, 2) == 5\n", "prefix": "import math\n"})
    assert code_reward("def add(a, b):\n    return math.floor(a + b)\n", mbpp) == 0.5


def test_values_cross_the_boundary_faithfully():
    tests = {"asserts": "def check(c):\n"
                        "    assert c([1, 2], k=3) == ([1, 2], 3)\n"
                        "    assert c({1: 'a', (2, 3): frozenset({4})}) == ({1: 'a', (2, 3): frozenset({4})}, None)\n"
                        "    assert c(b'xy', k=1.5) == (b'xy', 1.5)\n"
                        "    assert c(float('inf'))[0] == float('inf')\n"
                        "    assert list(c(range(3))[0]) == [0, 1, 2]\n"
                        "    assert c(10 ** 5000)[0] == 10 ** 5000\n"
                        "    assert c(True)[0] is True\n",
             "entry_point": "c"}
    assert code_reward("def c(x, k=None):\n    return (x, k)\n", tests) == 1.0
    # a generator comes back as an iterator, not a list: == a list stays False, as in Python
    gen = {"asserts": "def check(c):\n    assert c() == [1]\n    assert list(c()) == [1]\n", "entry_point": "c"}
    assert code_reward("def c():\n    return (i for i in [1])\n", gen) == 0.5
    # exceptions of builtin types cross; tests that expect them pass
    exc = {"asserts": "def check(c):\n    try:\n        c(0)\n        assert False\n    except ZeroDivisionError:\n        assert True\n", "entry_point": "c"}
    assert code_reward("def c(x):\n    return 1 / x\n", exc) == 1.0


def test_code_reward_cases():
    tests = json.dumps({"cases": [{"stdin": "2\n", "stdout": "4\n"}, {"stdin": "3", "stdout": "9"}, {"stdin": "4", "stdout": "17"}]})
    assert code_reward("n = int(input())\nprint(n * n)   \n", tests) == pytest.approx(2 / 3)
    assert code_reward("n = int(input())\nprint(n * n)\n", tests, strict=True) == 0.0
    # the right output with a non-zero exit is not a pass
    assert code_reward("n = int(input())\nprint(n * n)\nraise SystemExit(1)\n", tests) == 0.0


def test_code_results_report_status():
    r = code_results(["while True: pass"], [{"cases": [{"stdout": "1"}]}], timeout_s=0.3)[0]
    assert (r.score, r.passed, r.total, r.status) == (0.0, 0, 1, "timeout")


def test_local_scorer_both_kinds():
    with LocalScorer() as s:
        assert s.score("math", [r"\boxed{\frac{1}{2}}", "#### 3"], ["0.5", "4"]) == [1.0, 0.0]
        tests = json.dumps({"asserts": "def check(c):\n    assert c(2) == 3\n", "entry_point": "inc"})
        assert s.score("code", ["def inc(x):\n    return x + 1\n", "def inc(x):\n    return x\n"], [tests, tests]) == [1.0, 0.0]
        assert s.score("choice", [r"\boxed{13}", "I pick 4"], ["[11, 13]", "[5]"]) == [1.0, 0.0]
        with pytest.raises(ValueError, match="unknown kind"):
            s.score("poetry", ["x"], ["y"])
        with pytest.raises(ValueError, match="references"):
            s.score("math", ["x", "y"], ["1"])


def test_public_names():
    for name in ("run_code", "run_many", "code_reward", "math_reward", "isolation", "ExecResult", "LocalScorer"):
        assert hasattr(reward_sandbox, name)


def test_fresh_interpreter_mode():
    from reward_sandbox.runner import Runner

    with Runner(RunnerConfig(workers=1, fresh_interpreter=True)) as r:
        assert r.run_code("print(input()[::-1])", stdin="abc").stdout == "cba\n"
        assert r.run_code("import time\ntime.sleep(5)", timeout_s=0.3).status == "timeout"
        res = code_results(["def f(x):\n    return x + 1\n"], [{"asserts": "assert f(1) == 2\n"}], runner=r)[0]
        assert res.score == 1.0


def test_the_sweep_sees_children_forked_by_any_thread():
    """A child is listed under the thread that forked it: a program forking from a thread of
    its own must not hide it from the supervisor's sweep."""
    import importlib
    import os
    import subprocess
    import threading
    import time

    supervisor = importlib.import_module("reward_sandbox._inside.supervisor")
    box, done = [], threading.Event()

    def fork_and_stay():  # the thread must live on: a dead thread's children move to another
        box.append(subprocess.Popen(["sleep", "30"]))
        done.wait(10)
    t = threading.Thread(target=fork_and_stay)
    t.start()
    try:
        while not box:
            time.sleep(0.01)
        assert box[0].pid in supervisor._children(os.getpid())
    finally:
        done.set()
        t.join()
        box[0].kill()
        box[0].wait()
