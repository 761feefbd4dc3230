"""Prompt datasets shared by the learner (which leases them) and evaluation.

Built-in tasks are procedural, seeded and have exact answers, so nothing is
downloaded: ``arithmetic`` (a op b, answer an integer; ``arithmetic_small``
with operands up to 10). A ``.jsonl`` or ``.parquet`` path loads records
``{"prompt": str, "answer": str, "kind": "math"}`` (kind optional, default
"math", one of ``common.protocol.SCORE_KINDS``; "code" records carry JSON tests
in "answer", "choice" records a JSON list of accepted integers), or math
records in veRL's layout (``prompt`` chat messages,
``reward_model.ground_truth``), so its preprocessed datasets load as they are.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from common.protocol import SCORE_KINDS

ANSWER_FORMAT = " Put the final answer in \\boxed{}."


@dataclass(frozen=True)
class TaskItem:
    prompt: str | tuple[tuple[str, str], ...]
    """The question, or a whole chat as (role, content) pairs (common.models.encode_prompt)."""
    reference: str
    kind: str = "math"


def arithmetic(n: int, seed: int, max_operand: int = 20) -> list[TaskItem]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        items.append(TaskItem(f"What is {a} {op} {b}?" + ANSWER_FORMAT, str(value)))
    return items


def arithmetic_small(n: int, seed: int) -> list[TaskItem]:
    """``arithmetic`` with operands up to 10 (363 distinct problems): the demo's task, where the
    135M model is right often enough that most groups hold both right and wrong answers."""
    return arithmetic(n, seed, max_operand=10)


BUILTIN = {"arithmetic": arithmetic, "arithmetic_small": arithmetic_small}


def held_out(name: str, *, n: int, seed: int, train_n: int, train_seed: int) -> list[TaskItem]:
    """``n`` distinct items of built-in task ``name`` that are not among the training prompts
    (``load_tasks(name, n=train_n, seed=train_seed)``). A small generator repeats itself: 512
    arithmetic prompts from two seeds share about a third, so a held-out set drawn from another
    seed alone would partly measure memorised training prompts."""
    if name not in BUILTIN:
        raise ValueError(f"held_out: {name!r} is not a built-in task {sorted(BUILTIN)}")
    seen = {t.prompt for t in load_tasks(name, n=train_n, seed=train_seed)}
    out: list[TaskItem] = []
    k = 2 * n
    while len(out) < n:
        out = []
        taken = set(seen)
        for item in BUILTIN[name](k, seed):
            if item.prompt not in taken:
                taken.add(item.prompt)
                out.append(item)
        if len(out) < n and k > 64 * (n + train_n):
            raise ValueError(f"held_out: task {name!r} has fewer than {n} prompts outside the {train_n} trained on")
        k *= 2
    return out[:n]


def load_tasks(name: str, *, n: int, seed: int) -> list[TaskItem]:
    """A built-in task by name (``n`` items from ``seed``), or a .jsonl or .parquet file (all of it)."""
    if name in BUILTIN:
        return BUILTIN[name](n, seed)
    path = Path(name)
    if path.suffix not in (".jsonl", ".parquet") or not path.is_file():
        raise ValueError(f"{name!r} is neither a built-in task {sorted(BUILTIN)} nor a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # heavy: only for parquet files

        items = [_record(f"{path} row {i}", rec) for i, rec in enumerate(pq.read_table(path).to_pylist(), 1)]
    else:
        items = [_record(f"{path}:{i}", _json_line(f"{path}:{i}", line))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not items:
        raise ValueError(f"{path} holds no records")
    return items


def _json_line(where: str, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON: {e}") from None


def _record(where: str, rec) -> TaskItem:
    """One record as a TaskItem; a ValueError naming the file and record for anything else,
    so a bad record stops the learner at start rather than an actor at scoring time (where a
    reference no scorer can read would come back to be leased again and again)."""
    if isinstance(rec, dict) and "reward_model" in rec:
        return _verl_record(where, rec)
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("answer"), str):
        raise ValueError(f"{where}: needs string fields 'prompt' and 'answer' (or veRL's 'prompt' and "
                         f"'reward_model')")
    kind = rec.get("kind") or "math"  # parquet gives None where a row has no kind
    if kind not in SCORE_KINDS:
        raise ValueError(f"{where}: kind {kind!r} is not one of {SCORE_KINDS}")
    if kind in ("code", "choice"):  # their answers are JSON (tests; accepted integers)
        try:
            json.loads(rec["answer"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: a {kind!r} answer must be JSON: {e}") from None
    return TaskItem(rec["prompt"], rec["answer"], kind)


def _verl_record(where: str, rec: dict) -> TaskItem:
    """A record in veRL's RL dataset layout (its data preprocessing scripts write it):
    ``prompt`` a list of chat messages, ``reward_model.ground_truth`` the answer, ``ability``
    the domain. Math only: other domains' ground truths are not in a form our scorers read."""
    model = rec["reward_model"]
    truth = model.get("ground_truth") if isinstance(model, dict) else None
    if isinstance(truth, (int, float)) and not isinstance(truth, bool):
        truth = str(truth)
    if not isinstance(truth, str):
        raise ValueError(f"{where}: reward_model.ground_truth must be a string or a number")
    ability = rec.get("ability") or "math"
    if ability != "math":
        raise ValueError(f"{where}: ability {ability!r}: only math is read in veRL's layout; write "
                         f"{{prompt, answer, kind}} records for other kinds")
    messages = rec.get("prompt")
    if isinstance(messages, str):
        return TaskItem(messages, truth, "math")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise ValueError(f"{where}: prompt must be a string or a list of {{role, content}} messages")
    return TaskItem(tuple((m["role"], m["content"]) for m in messages), truth, "math")


# --------------------------------------------------------------------------- many_answers
# Questions with many equally correct integer answers (kind "choice", scored by
# reward_sandbox/choice.py against a JSON list of the accepted integers). A
# reward-maximiser may collapse onto one answer per question; a distribution
# matcher should keep several: this is the task the mode-coverage bench uses.

def _primes_between(rng: random.Random) -> tuple[str, list[int]]:
    lo = rng.randint(10, 50)
    hi = min(100, lo + rng.randint(30, 50))
    primes = [p for p in range(lo, hi + 1) if p > 1 and all(p % d for d in range(2, int(p ** 0.5) + 1))]
    return f"Name a prime number between {lo} and {hi} (inclusive).", primes


def _multiple_of(rng: random.Random) -> tuple[str, list[int]]:
    k, hi = rng.randint(3, 9), rng.choice([50, 60, 80, 100])
    return f"Name a multiple of {k} between 1 and {hi} (inclusive).", list(range(k, hi + 1, k))


def _digit_sum(rng: random.Random) -> tuple[str, list[int]]:
    s = rng.randint(5, 14)
    return (f"Name a two-digit number whose digits sum to {s}.",
            [v for v in range(10, 100) if v // 10 + v % 10 == s])


def _perfect_square(rng: random.Random) -> tuple[str, list[int]]:
    hi = rng.randint(50, 200)
    return f"Give a perfect square between 1 and {hi} (inclusive).", [i * i for i in range(1, 15) if i * i <= hi]


def _even_between(rng: random.Random) -> tuple[str, list[int]]:
    lo = rng.randint(10, 60)
    hi = lo + rng.randint(20, 40)
    return f"Name an even number between {lo} and {hi} (inclusive).", [v for v in range(lo, hi + 1) if v % 2 == 0]


_MANY_ANSWER_FAMILIES = (_primes_between, _multiple_of, _digit_sum, _perfect_square, _even_between)


def many_answers(n: int, seed: int) -> list[TaskItem]:
    """``n`` questions cycling through the families (so any n >= 5 has each), parameters from ``seed``."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        question, accepted = _MANY_ANSWER_FAMILIES[i % len(_MANY_ANSWER_FAMILIES)](rng)
        items.append(TaskItem(question + ANSWER_FORMAT, json.dumps(accepted), "choice"))
    return items


BUILTIN["many_answers"] = many_answers
