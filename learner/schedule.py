"""Learning-rate schedule: linear warm-up, then constant or cosine decay.

A pure function of the optimizer step, the factor each parameter group's base
learning rate is multiplied by (the policy's ``lr`` and the log Z head's
``algo.log_z_lr`` alike). The trainer hands it to DeepSpeed as a
``torch.optim.lr_scheduler.LambdaLR``, which DeepSpeed steps after every
applied optimizer step (a step skipped for a non-finite loss or gradient does
not advance it) and saves in resumable checkpoints.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0 for the first).

    Warm-up: steps 0 .. warmup_steps-1 use (step + 1) / warmup_steps, so the first step
    already moves (a factor of 0 would waste it) and step warmup_steps - 1 reaches 1.
    After it, "constant" stays at 1 and "cosine" falls from 1 towards ``min_ratio`` along
    half a cosine that reaches it at step ``total_steps``, one past the run's last (the
    convention of transformers' cosine schedule: the last step still moves when
    ``min_ratio`` is 0), and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; one of {SCHEDULES}")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
