"""Resume: a run checkpointed after step 2 and resumed in a fresh trainer ends with
weights bit-identical to an uninterrupted run over the same groups; checkpoints are
atomic, the newest K are kept, and the step log is trimmed to the checkpoint."""
import json

import pytest
import torch

from common.config import ConfigError, load
from learner import checkpoint
from learner.config import LearnerConfig
from learner.trainer import Trainer
from tests.unit.test_trainer import _groups, tiny  # noqa: F401  (fixture: tiny model, gloo group)


def _trainer(model: str, **schedule) -> Trainer:
    cfg = load(LearnerConfig, None, {"model": model, "groups_per_step": 2, "micro_batch_seqs": 3, "lr": 1e-2,
                                     **schedule})
    torch.manual_seed(0)
    return Trainer(cfg, 0, 1, torch.device("cpu"), pad_id=0)


def _weights(tr: Trainer) -> dict:
    return {n: p.detach().clone() for n, p in tr.module.named_parameters()}


@pytest.mark.parametrize("schedule", [{}, {"lr_warmup_steps": 3, "lr_schedule": "cosine", "max_steps": 4},
                                      {"dtype": "bfloat16", "zero_stage": 1}, {"dtype": "bfloat16", "zero_stage": 2}],
                         ids=["constant", "warmup-cosine", "bf16-zero1", "bf16-zero2"])
def test_resumed_run_ends_bit_identical(tiny, tmp_path, schedule):  # noqa: F811
    """With a schedule, the resumed trainer also continues its learning rate mid-warm-up
    (a fresh schedule would restart at step 0's rate and end elsewhere). bf16 at ZeRO 1 and 2
    (the GPU configuration): DeepSpeed's BF16_Optimizer and ZeRO optimizer keep fp32 master
    weights and fp32 gradient sums, which the checkpoint must carry."""
    batches = [_groups(tiny) for _ in range(4)]
    straight = _trainer(tiny, **schedule)
    torch.manual_seed(1)
    lrs = [straight.step(g, version=v)["lr"] for v, g in enumerate(batches)]

    first = _trainer(tiny, **schedule)
    torch.manual_seed(1)
    for v, g in enumerate(batches[:2]):
        first.step(g, version=v)
    path = checkpoint.save(first.engine, tmp_path, 2, {"buffer": None}, rank=0, keep=2)
    del first

    resumed = _trainer(tiny, **schedule)
    meta = checkpoint.load(resumed.engine, checkpoint.resolve(tmp_path, "auto"))
    checkpoint.restore_rng(meta)  # the log Z head's dropout draws continue where they were
    assert meta["step"] == 2 and checkpoint.newest(tmp_path) == path
    resumed_lrs = [resumed.step(g, version=v)["lr"] for v, g in enumerate(batches[2:], start=2)]
    assert resumed_lrs == lrs[2:]

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])][:3]


def test_checkpoints_are_atomic_and_pruned(tiny, tmp_path):  # noqa: F811
    tr = _trainer(tiny)
    for step in (1, 2, 3):
        checkpoint.save(tr.engine, tmp_path, step, {"buffer": None}, rank=0, keep=2)
    names = sorted(p.name for p in checkpoint.checkpoints_dir(tmp_path).iterdir())
    assert names == ["step-00000002", "step-00000003"]
    # a save killed half-way leaves a temporary directory that resume never picks
    (checkpoint.checkpoints_dir(tmp_path) / ".tmp-step-00000004" / "ds").mkdir(parents=True)
    assert checkpoint.newest(tmp_path).name == "step-00000003"
    assert checkpoint.resolve(tmp_path, "never") is None


def test_step_log_is_trimmed_to_the_checkpoint(tmp_path):
    """To the rows the checkpoint had: a skipped step's row written after the checkpoint at
    step 3 carries step 3 too, but its spent prompts are back in that checkpoint's queue and
    will be trained again: kept, they would count twice."""
    log = tmp_path / "steps.jsonl"
    rows = [{"step": s, "prompt_ids": [s]} for s in range(1, 4)] + [{"step": 3, "prompt_ids": [9], "skipped": "loss"}] \
        + [{"step": s, "prompt_ids": [s]} for s in range(4, 6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert checkpoint.truncate_log(log, 3, rows=3) == 3
    assert [json.loads(x) for x in log.read_text().splitlines()] == rows[:3]
    # a checkpoint that did not count its rows: by step (the skip row stays)
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert checkpoint.truncate_log(log, 3, rows=None) == 2
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 3]


def test_resume_from_a_named_checkpoint(tiny, tmp_path):  # noqa: F811
    """``resume = PATH`` takes that checkpoint, not the newest; a path that is not a complete
    checkpoint is refused at start (``check_inputs``), naming the field."""
    tr = _trainer(tiny)
    for step in (1, 2):
        checkpoint.save(tr.engine, tmp_path, step, {"buffer": None}, rank=0, keep=2)
    first = checkpoint.checkpoints_dir(tmp_path) / "step-00000001"
    cfg = load(LearnerConfig, None, {"model": tiny, "run_dir": str(tmp_path), "resume": str(first)})
    cfg.check_inputs()
    assert checkpoint.resolve(cfg.run_dir, cfg.resume) == first
    assert checkpoint.load(_trainer(tiny).engine, first)["step"] == 1
    with pytest.raises(ConfigError, match=r"^resume: .*step-00000009 is not a complete checkpoint"):
        load(LearnerConfig, None, {"model": tiny, "resume": str(first.parent / "step-00000009")}).check_inputs()
