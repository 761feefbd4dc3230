"""Resumable checkpoints of a learner run (DESIGN.md section 3).

A checkpoint is a directory ``run_dir/checkpoints/step-00000042`` holding
DeepSpeed's state (policy, log Z head, optimizer; every rank writes its own
shards) under ``ds/`` and ``meta.json``: the step (= policy version), the
replay buffer's prompt queue, epoch and shuffling RNG, and the torch RNG.

Atomic: all ranks write into ``.tmp-step-N``; rank 0 writes meta.json last
and renames the directory into place, so a kill at any moment leaves either
the previous checkpoints or the new one, never a half-written one that
``--resume auto`` would pick. The newest ``keep`` are kept.

Resume: ``resolve(run_dir, "auto" | "never" | PATH)`` names the checkpoint,
``Trainer.load`` restores the engine, ``restore_rng`` the random state, and
``truncate_log`` drops the steps.jsonl rows written after the checkpoint:
their updates were lost with the process (and a skipped step's spent prompts
are in the checkpoint's queue again).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

PATTERN = re.compile(r"^step-(\d{8})$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def newest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return None
    done = sorted(p for p in d.iterdir() if PATTERN.match(p.name) and (p / "meta.json").is_file())
    return done[-1] if done else None


def resolve(run_dir: str | Path, resume: str) -> Path | None:
    """``resume``: "never" (start fresh), "auto" (the newest, or fresh if none), or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return newest(run_dir)
    path = Path(resume)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no meta.json)")
    return path


def save(engine, run_dir: str | Path, step: int, meta: dict, rank: int, keep: int) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's final path."""
    d = checkpoints_dir(run_dir)
    final = d / f"step-{step:08d}"
    tmp = d / f".tmp-step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp / "ds"), tag="state")
    dist.barrier()
    if rank == 0:
        meta = dict(meta, step=step, torch_rng=torch.get_rng_state().tolist())
        (tmp / "meta.json").write_text(json.dumps(meta))
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a stale one from before a resume to an earlier step
        os.rename(tmp, final)
        _fsync_dir(d)
        for old in sorted(p for p in d.iterdir() if PATTERN.match(p.name))[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load(engine, path: Path) -> dict:
    """Restore the engine (every rank) and return the checkpoint's meta."""
    engine.load_checkpoint(str(path / "ds"), tag="state", load_optimizer_states=True,
                           load_lr_scheduler_states=True)
    return json.loads((path / "meta.json").read_text())


def restore_rng(meta: dict) -> None:
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))


def truncate_log(log_path: Path, step: int, rows: int | None) -> int:
    """Keep the steps.jsonl rows the checkpoint had: its first ``rows`` (None, a checkpoint
    that did not count them: those up to ``step``, which keeps a skipped step's row written
    after it). Atomic; returns how many were dropped."""
    if not log_path.is_file():
        return 0
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    keep = lines[:rows] if rows is not None else [line for line in lines if json.loads(line)["step"] <= step]
    tmp = log_path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, log_path)
    return len(lines) - len(keep)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
