"""code_reward: run a completion's program against tests in the sandbox.

Tests come as a dict or a JSON string (the form the actors carry):

- ``{"asserts": "<python test code>", "entry_point": "f", "prefix": "..."}``
  HumanEval style when entry_point is given (the test code defines
  ``check(candidate)``), else module-level asserts (MBPP style). ``prefix``
  (optional) is prepended to the program, e.g. a prompt's imports. The
  judge runs the tests in a separate process and calls the program's
  functions across the boundary (_inside/judge.py).
- ``{"cases": [{"stdin": "...", "stdout": "..."}, ...]}``: the program runs
  once per case; the parent compares its stdout with the expected text
  (trailing whitespace on each line and trailing blank lines ignored).

The score is the fraction of tests passed, or with ``strict=True`` 1.0 only
if all passed. Nothing the program prints decides a verdict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .runner import Job, JobResult, Limits, Runner

MAX_CASES = 256
MAX_TEST_CHARS = 1 << 20

_FENCE_RE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}


@dataclass(frozen=True)
class TestSpec:
    asserts: str | None = None
    entry_point: str | None = None
    prefix: str = ""
    cases: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CodeResult:
    score: float
    passed: int
    total: int
    status: str  # status of the (first failing, else first) run
    detail: str = ""


def extract_program(completion: str) -> str:
    """The last python-tagged fenced block, else the last fenced block, else the text."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    blocks = _FENCE_RE.findall(completion)
    if not blocks:
        # an unterminated fence (generation cut off): take what follows it
        m = re.search(r"```[\w+-]*[^\n]*\n", completion)
        return completion[m.end():] if m else completion
    tagged = [body for tag, body in blocks if tag.lower() in _PY_TAGS]
    return (tagged or [body for _, body in blocks])[-1]


def parse_tests(tests: str | dict) -> TestSpec:
    """Validate a test spec; ValueError names what is wrong."""
    if isinstance(tests, str):
        if len(tests) > MAX_TEST_CHARS:
            raise ValueError(f"tests: {len(tests)} characters, limit {MAX_TEST_CHARS}")
        try:
            tests = json.loads(tests)
        except ValueError as exc:
            raise ValueError(f"tests: not valid JSON: {exc}") from exc
    if not isinstance(tests, dict):
        raise ValueError(f"tests must be a JSON object, got {type(tests).__name__}")
    unknown = set(tests) - {"asserts", "entry_point", "prefix", "cases"}
    if unknown:
        raise ValueError(f"tests: unknown field(s) {sorted(unknown)}")
    if ("asserts" in tests) == ("cases" in tests):
        raise ValueError("tests must have exactly one of 'asserts' or 'cases'")
    prefix = tests.get("prefix", "")
    if not isinstance(prefix, str):
        raise ValueError("tests.prefix must be a string")
    if "asserts" in tests:
        asserts, entry = tests["asserts"], tests.get("entry_point")
        if not isinstance(asserts, str) or not asserts.strip():
            raise ValueError("tests.asserts must be a non-empty string")
        if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
            raise ValueError(f"tests.entry_point must be an identifier, got {entry!r}")
        return TestSpec(asserts=asserts, entry_point=entry, prefix=prefix)
    cases = tests["cases"]
    if not isinstance(cases, list) or not cases or len(cases) > MAX_CASES:
        raise ValueError(f"tests.cases must be a list of 1..{MAX_CASES} cases")
    out = []
    for i, c in enumerate(cases):
        if not isinstance(c, dict) or not isinstance(c.get("stdin", ""), str) or not isinstance(c.get("stdout"), str):
            raise ValueError(f"tests.cases[{i}] must be {{'stdin': str, 'stdout': str}}")
        out.append((c.get("stdin", ""), c["stdout"]))
    return TestSpec(cases=tuple(out), prefix=prefix)


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def build_job(completion: str, spec: TestSpec, limits: Limits) -> Job:
    program = extract_program(completion)
    source = spec.prefix + ("\n" if spec.prefix and not spec.prefix.endswith("\n") else "") + program
    if spec.asserts is not None:
        return Job(source, ("",), tests=spec.asserts, entry_point=spec.entry_point, limits=limits)
    return Job(source, tuple(stdin for stdin, _ in spec.cases), limits=limits)


def verdict(spec: TestSpec, result: JobResult, strict: bool) -> CodeResult:
    if spec.asserts is not None:
        run = result.runs[0]
        total, passed = result.tests_total, result.tests_passed
        detail = result.judge_error or ""
        status = run.status
    else:
        total = len(spec.cases)
        ok = [r.status == "ok" and _normalise(r.stdout) == _normalise(want) for r, (_, want) in zip(result.runs, spec.cases)]
        passed = sum(ok)
        bad = [r for r, good in zip(result.runs, ok) if not good]
        status = (bad or result.runs)[0].status
        detail = ""
    frac = passed / total if total else 0.0
    score = (1.0 if passed == total else 0.0) if strict else frac
    return CodeResult(score, passed, total, status, detail)


def code_results(
    completions: list[str],
    tests: list[str | dict],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    strict: bool = False,
    runner: Runner | None = None,
) -> list[CodeResult]:
    """Score a batch in parallel across the runner's pool; results in order."""
    if len(completions) != len(tests):
        raise ValueError(f"{len(completions)} completions but {len(tests)} test specs")
    from . import api  # the default runner lives there

    runner = runner or api.default_runner()
    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)
    specs = [parse_tests(t) for t in tests]
    futures = [runner.submit(build_job(c, s, limits)) for c, s in zip(completions, specs)]
    return [verdict(s, f.result(), strict) for s, f in zip(specs, futures)]


def code_reward(
    completion: str,
    tests: str | dict,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    strict: bool = False,
) -> float:
    """Fraction of tests the completion's program passes (strict: 1.0 only if all)."""
    return code_results([completion], [tests], timeout_s=timeout_s, memory_mb=memory_mb, strict=strict)[0].score


def code_rewards(completions, tests, *, timeout_s=5.0, memory_mb=512, strict=False, runner=None) -> list[float]:
    return [r.score for r in code_results(completions, tests, timeout_s=timeout_s, memory_mb=memory_mb, strict=strict, runner=runner)]
