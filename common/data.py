"""Prompt datasets shared by the learner (which leases them) and evaluation.

Built-in tasks are procedural, seeded and have exact answers, so nothing is
downloaded: ``arithmetic`` (a op b, answer an integer). A ``.jsonl`` path loads
records ``{"prompt": str, "answer": str, "kind": "math"}`` (kind optional,
default "math"; "code" records carry JSON tests in "answer").
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

ANSWER_FORMAT = " Give the final answer as \\boxed{number}."


@dataclass(frozen=True)
class TaskItem:
    prompt: str
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


BUILTIN = {"arithmetic": arithmetic}


def load_tasks(name: str, *, n: int, seed: int) -> list[TaskItem]:
    """A built-in task by name (``n`` items from ``seed``) or a .jsonl file (all of it)."""
    if name in BUILTIN:
        return BUILTIN[name](n, seed)
    path = Path(name)
    if path.suffix != ".jsonl" or not path.is_file():
        raise ValueError(f"tasks: {name!r} is neither a built-in task {sorted(BUILTIN)} nor a .jsonl file")
    items = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            rec = json.loads(line)
            if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("answer"), str):
                raise ValueError(f"{path}:{i + 1}: needs string fields 'prompt' and 'answer'")
            items.append(TaskItem(rec["prompt"], rec["answer"], rec.get("kind", "math")))
    return items
