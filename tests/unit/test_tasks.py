"""Built-in tasks with many correct answers (common/data.py ``many_answers``) and
their reward (reward_sandbox/choice.py), including the LocalScorer route.

Run: .venv/bin/python -m pytest tests/unit/test_tasks.py -q
"""
import json
import re

import pytest

from common.data import BUILTIN, load_tasks, many_answers
from reward_sandbox import LocalScorer
from reward_sandbox.choice import choice_reward, choice_rewards, extract_answer, parse_reference


def _is_prime(v: int) -> bool:
    return v > 1 and all(v % d for d in range(2, int(v ** 0.5) + 1))


def _expected(question: str) -> set[int]:
    """The accepted answers recomputed from the question text alone, independently of data.py."""
    nums = [int(x) for x in re.findall(r"\d+", question)]
    if question.startswith("Name a prime"):
        lo, hi = nums
        return {v for v in range(lo, hi + 1) if _is_prime(v)}
    if question.startswith("Name a multiple"):
        k, _, hi = nums
        return {v for v in range(1, hi + 1) if v % k == 0}
    if question.startswith("Name a two-digit"):
        return {v for v in range(10, 100) if sum(map(int, str(v))) == nums[0]}
    if question.startswith("Give a perfect square"):
        return {i * i for i in range(1, 100) if 1 <= i * i <= nums[1]}
    if question.startswith("Name an even"):
        lo, hi = nums
        return {v for v in range(lo, hi + 1) if v % 2 == 0}
    raise AssertionError(f"unknown family: {question}")


def test_many_answers_is_registered_seeded_and_kind_choice():
    assert BUILTIN["many_answers"] is many_answers
    a = load_tasks("many_answers", n=20, seed=3)
    assert a == load_tasks("many_answers", n=20, seed=3)
    assert a != load_tasks("many_answers", n=20, seed=4)
    assert len(a) == 20 and {t.kind for t in a} == {"choice"}
    assert all(r"\boxed{" in t.prompt for t in a)
    # a prefix of a longer draw is the shorter draw: the learner's prompts and eval's agree
    assert load_tasks("many_answers", n=5, seed=3) == a[:5]


def test_every_family_appears_and_references_are_exactly_the_correct_answers():
    items = load_tasks("many_answers", n=50, seed=0)
    families = {t.prompt.split(" ")[1] + t.prompt.split(" ")[2] for t in items}
    assert len(families) == 5
    for t in items:
        accepted = json.loads(t.reference)
        assert set(accepted) == _expected(t.prompt.split(" Give the final")[0]), t.prompt
        assert len(accepted) >= 3, t.prompt  # "many equally correct answers"


@pytest.mark.parametrize("text, answer", [
    (r"The answer is \boxed{13}.", 13),
    (r"\boxed{11} hmm, no: \boxed{ 17 }", 17),          # the last box wins
    (r"\boxed{13} and the next one is 14", 13),          # a box beats a later bare number
    (r"\boxed{$-4$}", -4),
    (r"\boxed{1,000}", 1000),
    ("I pick 41, no, 43", 43),                           # no box: the last integer
    (r"\boxed{11 or 13}", None),                         # committed to a non-integer answer
    (r"\boxed{number}", None),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_choice_reward():
    ref = json.dumps([11, 13, 17, 19])
    assert choice_reward(r"A prime: \boxed{13}", ref) == 1.0
    assert choice_reward(r"\boxed{15}", ref) == 0.0
    assert choice_reward("I would say 19", ref) == 1.0
    assert choice_reward("I do not know", ref) == 0.0
    assert choice_rewards([r"\boxed{11}", r"\boxed{12}"], [ref, ref]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        choice_rewards(["x"], [ref, ref])


@pytest.mark.parametrize("bad", ['{"a": 1}', '[1, "2"]', "[1.5]", "[true]"])
def test_malformed_reference_raises(bad):
    with pytest.raises(ValueError):
        parse_reference(bad)


def test_local_scorer_routes_choice_without_starting_pools():
    scorer = LocalScorer()
    ref = json.dumps([4, 9, 16])
    scores, statuses = scorer.score_items("choice", [r"\boxed{9}", r"\boxed{10}", "16"], [ref] * 3)
    assert scores == [1.0, 0.0, 1.0] and statuses == ["ok"] * 3
    assert scorer.score("choice", [r"\boxed{4}"], [ref]) == [1.0]
    assert scorer._math is None and scorer._code is None  # pure string work
    scorer.close()


def test_held_out_prompts_are_distinct_and_never_trained_on():
    from common.data import held_out, load_tasks

    train = {t.prompt for t in load_tasks("arithmetic", n=512, seed=0)}
    again = {t.prompt for t in load_tasks("arithmetic", n=512, seed=1)}
    assert train & again  # why held_out exists: another seed alone repeats training prompts
    items = held_out("arithmetic", n=200, seed=1, train_n=512, train_seed=0)
    prompts = [t.prompt for t in items]
    assert len(prompts) == 200 == len(set(prompts)) and not train & set(prompts)
    assert items == held_out("arithmetic", n=200, seed=1, train_n=512, train_seed=0)  # reproducible
    with pytest.raises(ValueError):  # 21 * 21 * 3 = 1323 problems exist; 1000 more cannot be found
        held_out("arithmetic", n=1000, seed=1, train_n=512, train_seed=0)
    with pytest.raises(ValueError):
        held_out("not_a_task", n=1, seed=0, train_n=1, train_seed=0)
