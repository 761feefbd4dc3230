"""Reward for "choice" prompts: questions with many equally correct integer answers.

The reference is a JSON list of the accepted integers (common/data.py,
``many_answers``). The completion's final answer is the last ``\\boxed{...}``,
else the last integer in the text; it scores 1.0 when it is one of the accepted
integers. Pure string work: no sympy, no worker pool.

    choice_reward("a prime: \\\\boxed{13}", "[11, 13, 17]")  # 1.0
    extract_answer("I pick 41, no, 43")                       # 43
"""

from __future__ import annotations

import json
import re

from .math_extract import last_boxed

_INT_RE = re.compile(r"-?\d+")
# An integer answer longer than this is not an answer to any question we ask;
# refusing it keeps int() on adversarial digit strings cheap.
_MAX_DIGITS = 30


def _as_int(text: str) -> int | None:
    """The integer ``text`` spells (surrounding $, spaces and a trailing '.' allowed), else None."""
    t = text.strip().strip("$").strip().rstrip(".").replace(",", "")
    if re.fullmatch(r"[+-]?\d+", t) and len(t) <= _MAX_DIGITS:
        return int(t)
    return None


def extract_answer(completion: str) -> int | None:
    """The completion's final integer answer, or None when it states none.

    A boxed answer that is not an integer ("\\boxed{11 or 13}") is None rather
    than falling back to the text: the model committed to a non-integer answer.
    """
    boxed = last_boxed(completion)
    if boxed is not None:
        return _as_int(boxed)
    found = _INT_RE.findall(completion)
    if not found or len(found[-1].lstrip("-")) > _MAX_DIGITS:
        return None
    return int(found[-1])


def parse_reference(reference_json: str) -> frozenset[int]:
    """The accepted answers; a malformed reference is a bug in the task, so it raises."""
    accepted = json.loads(reference_json)
    if not isinstance(accepted, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in accepted):
        raise ValueError(f"choice reference must be a JSON list of integers, got {reference_json[:80]!r}")
    return frozenset(accepted)


def choice_reward(completion: str, reference_json: str) -> float:
    """1.0 if the completion's final answer is one of the accepted integers, else 0.0."""
    answer = extract_answer(completion)
    return 1.0 if answer is not None and answer in parse_reference(reference_json) else 0.0


def choice_rewards(completions: list[str], references: list[str]) -> list[float]:
    """choice_reward over a batch."""
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    return [choice_reward(c, r) for c, r in zip(completions, references)]
