"""Which collective backend the weight group agrees on (rank 0 decides, members read it):
NCCL cannot put two ranks on one GPU, and needs every member on a GPU."""
import pytest

from common.weight_sync import resolve_backend


def test_auto_takes_nccl_only_on_distinct_gpus():
    assert resolve_backend("auto", "GPU-a", ["GPU-b", "GPU-c"]) == "nccl"
    assert resolve_backend("auto", "GPU-a", ["GPU-b", "GPU-a"]) == "gloo"  # an actor shares the learner's GPU
    assert resolve_backend("auto", "GPU-a", ["GPU-b", "GPU-b"]) == "gloo"  # two actors share a GPU
    assert resolve_backend("auto", "GPU-a", ["GPU-b", None]) == "gloo"  # an actor on CPU
    assert resolve_backend("auto", None, []) == "gloo"  # a learner on CPU


def test_explicit_nccl_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="share a GPU"):
        resolve_backend("nccl", "GPU-a", ["GPU-a"])
    with pytest.raises(ValueError, match="share a GPU"):
        resolve_backend("nccl", "GPU-a", ["GPU-b", "GPU-b"])
    with pytest.raises(ValueError, match="every member on a GPU"):
        resolve_backend("nccl", "GPU-a", [None])
    assert resolve_backend("gloo", "GPU-a", ["GPU-a"]) == "gloo"
    with pytest.raises(ValueError, match="weight backend"):
        resolve_backend("mpi", None, [])
