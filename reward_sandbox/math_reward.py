"""math_reward: 1.0 if a completion's final answer equals the ground truth.

The answer is extracted in-process (math_extract.py), absurd answers are
refused there, and the symbolic comparison runs in a killable worker
(math_pool.py) with a hard deadline. A shared default pool is started on
first use and closed at interpreter exit.

    from reward_sandbox import math_reward
    math_reward("... so the answer is \\boxed{\\frac12}", "0.5")  # 1.0
"""

from __future__ import annotations

import atexit
import os
import re
import threading

from .math_extract import extract_answer, is_absurd, last_boxed
from .math_pool import MathPool, MathPoolConfig, MathResult

_default_pool: MathPool | None = None
_default_lock = threading.Lock()


def default_pool() -> MathPool:
    """The process-wide pool; workers = min(4, cpus)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = MathPool(MathPoolConfig(workers=max(1, min(4, os.cpu_count() or 1))))
            atexit.register(_close_default)
        return _default_pool


def _close_default() -> None:
    global _default_pool
    with _default_lock:
        if _default_pool is not None:
            _default_pool.close()
            _default_pool = None


def gold_answer(ground_truth: str) -> str:
    """Normalise a reference answer: inner \\boxed{} if any, no $ delimiters."""
    if not isinstance(ground_truth, str):
        raise TypeError(f"ground_truth must be str, got {type(ground_truth).__name__}")
    gt = last_boxed(ground_truth) or ground_truth
    gt = gt.strip()
    if gt.startswith("####"):
        gt = gt[4:].strip()
    return gt.strip("$").strip()


# An arithmetic operator between two numbers: "\boxed{7 * 7}" restates a question
# ("what is 7 * 7?") instead of answering it, and sympy would evaluate it to the right
# number, so the policy learns to copy the question (seen in the demo). A power of ten
# after a product is scientific notation, a final answer: 3 \times 10^5 is kept.
_NUMBER = r"(?<![\w^.\\])\d+(?:\.\d+)?(?![\w^.])"  # a plain number: not 2 in x^2, 2x or \sqrt2
_UNEVALUATED = re.compile(_NUMBER + r"\s*(?:[-+]|\\div|(?:[*×·]|\\times|\\cdot)(?!\s*10\s*\^))\s*" + _NUMBER)


def unevaluated(pred: str, gold: str) -> bool:
    """An answer left as arithmetic on numbers where the reference is not."""
    return bool(_UNEVALUATED.search(pred)) and not _UNEVALUATED.search(gold)


def math_results(
    completions: list[str],
    ground_truths: list[str],
    *,
    timeout_s: float = 3.0,
    pool: MathPool | None = None,
) -> list[MathResult]:
    """Per-item verdicts with status; the batched form behind math_reward."""
    if len(completions) != len(ground_truths):
        raise ValueError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    out: list[MathResult | None] = [None] * len(completions)
    pairs, where = [], []
    for i, (c, g) in enumerate(zip(completions, ground_truths)):
        pred = extract_answer(c)
        gold = gold_answer(g)
        if pred is None or not gold:
            out[i] = MathResult(False, "ok", "no answer")
        elif unevaluated(pred, gold):
            out[i] = MathResult(False, "ok", "unevaluated expression")
        elif is_absurd(pred):
            out[i] = MathResult(False, "refused", "absurd answer refused by pre-filter")
        elif pred == gold:
            out[i] = MathResult(True, "ok", "string match")
        else:
            pairs.append((pred, gold))
            where.append(i)
    if pairs:
        for i, r in zip(where, (pool or default_pool()).verify_many(pairs, timeout_s=timeout_s)):
            out[i] = r
    return [r for r in out if r is not None]


def math_reward(completion: str, ground_truth: str, *, timeout_s: float = 3.0) -> float:
    """1.0 if the completion's final answer is equivalent to ground_truth, else 0.0."""
    return 1.0 if math_results([completion], [ground_truth], timeout_s=timeout_s)[0].equal else 0.0


def math_rewards(completions: list[str], ground_truths: list[str], *, timeout_s: float = 3.0) -> list[float]:
    """math_reward over a batch, verified in parallel across the pool."""
    return [1.0 if r.equal else 0.0 for r in math_results(completions, ground_truths, timeout_s=timeout_s)]
