"""Two learner ranks (real gloo process group, real DeepSpeed, ZeRO 0 and 2) make the
same update as one rank on the same groups: for a full batch, for a batch that does not
split evenly (3 groups over 2 ranks) and for a batch smaller than the world (1 group:
rank 1 reruns one at loss scale 0). The gradient norm is what shows a wrong loss scale
(Adam's first step hides one); the weights show the direction.

GRPO, and REINFORCE++ (whose advantages are whitened over the whole batch, all ranks):
their loss is a mean over the batch's response tokens, so a rank's share is its tokens,
not its groups (FlowRL's log Z head has dropout, whose draws differ with the rank layout)."""
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from common.config import load
from common.protocol import Completion
from learner.buffer import Group
from learner.config import LearnerConfig
from learner.trainer import Trainer
from tests.integration.helpers import free_ports
from tests.unit.test_trainer import on_policy, tiny  # noqa: F401  (fixture: tiny model, a world-1 gloo group here)

N = 4
CASES = [("grpo", stage, groups) for stage in (0, 2) for groups in (4, 3, 1)] + \
        [("reinforce_pp", 0, groups) for groups in (4, 3, 1)]


def _groups(model_dir: str, count: int) -> list[Group]:
    """``count`` on-policy groups with varied scores, the same in every process."""
    rng = np.random.default_rng(7)
    groups = []
    for pid in range(count):
        prompt = rng.integers(3, 90, 4 + pid).astype(np.int32)
        comps = [Completion(rng.integers(3, 90, 2 + (i + pid) % 4).astype(np.int32), np.zeros(2 + (i + pid) % 4,
                            np.float32), "length", float(rng.random()), 0) for i in range(N)]
        groups.append(Group(pid, prompt, comps, "a"))
    return on_policy(groups, model_dir)


def _cfg(model_dir: str, algo: str, zero_stage: int) -> LearnerConfig:
    return load(LearnerConfig, None, {"model": model_dir, "groups_per_step": 4, "micro_batch_seqs": N, "lr": 1e-3,
                                      "sampling.n": N, "algo.algorithm": algo, "zero_stage": zero_stage})


def _rank(rank: int, port: int, model_dir: str, out: str) -> None:
    """One of two ranks: every case, as learner/worker.py runs a step (rank 0's groups shared)."""
    import deepspeed

    from learner.worker import _share
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    torch.set_num_threads(1)
    for algo, stage, count in CASES:
        torch.manual_seed(0)
        tr = Trainer(_cfg(model_dir, algo, stage), rank, 2, torch.device("cpu"), pad_id=0)
        mine, scale = _share(_groups(model_dir, count) if rank == 0 else None, rank, 2)
        stats = tr.step(mine, version=0, scale=scale)
        if rank == 0:
            torch.save({"stats": stats,
                        "weights": {n: p.detach().clone() for n, p in tr.module.policy.named_parameters()}},
                       f"{out}/{algo}-{stage}-{count}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ranks")
    (port,) = free_ports(1)
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_rank, args=(r, port, tiny, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 180  # ~20 s on 2 cores; a collective one rank never joins hangs
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        p.kill()
    assert not hung, f"ranks {hung} hung: a collective the other rank never joined"
    assert [p.exitcode for p in procs] == [0, 0], "a rank failed (its traceback is above)"
    return out


@pytest.mark.parametrize("algo,stage,count", CASES, ids=[f"{a}-zero{s}-{c}groups" for a, s, c in CASES])
def test_two_ranks_update_as_one(tiny, two_ranks, algo, stage, count):  # noqa: F811
    torch.manual_seed(0)
    one = Trainer(_cfg(tiny, algo, stage), 0, 1, torch.device("cpu"), pad_id=0)
    before = {n: p.detach().clone() for n, p in one.module.policy.named_parameters()}
    stats = one.step(_groups(tiny, count), version=0)
    got = torch.load(two_ranks / f"{algo}-{stage}-{count}.pt")
    # the step's report is the whole batch's too: uneven shares weighed, a rerun group not counted
    for key in ("grad_norm", "loss", "score_mean", "zero_variance_groups", "lr", "response_tokens"):
        assert got["stats"][key] == pytest.approx(stats[key], rel=1e-5, abs=1e-6), key  # a whitened loss is ~0
    # Adam's first step is lr × g/|g|: where a gradient is at rounding level (whitened advantages
    # cancel), its sign, and so that weight's step, can differ with the summation order
    same = total = 0
    moved = 0.0
    for n, p in one.module.policy.named_parameters():
        same += int((got["weights"][n] - p.detach()).abs().le(1e-6).sum())
        total += p.numel()
        moved = max(moved, float((p.detach() - before[n]).abs().max()))
    assert same / total > 0.999, f"{total - same} of {total} weights differ"
    assert moved > 5e-4  # lr 1e-3: the step moved the weights, far beyond the tolerance
