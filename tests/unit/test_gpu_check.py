"""What of bench/gpu_check.py and the vLLM model conversion runs without a GPU:
its command lines are ones the roles accept, its verdict, and the embedded
model converted once into the HF directory vLLM loads."""
import importlib.util
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_command_lines_parse_with_the_roles_own_parsers(gpu_check, tmp_path):
    import actors.__main__ as actors_main
    import learner.__main__ as learner_main

    a = gpu_check.parse_args(["--steps", "3"])
    learner_cmd, actor_cmd, _ = gpu_check.commands(a, tmp_path)
    cfg, gpus = learner_main.parse_args(learner_cmd[3:])
    assert gpus == 1 and cfg.max_steps == 3 and cfg.max_staleness == 0 and cfg.actors == 1
    acfg = actors_main.parse_args(actor_cmd[3:])
    acfg.validate()
    assert (acfg.engine, acfg.device, acfg.gpu_memory_utilization) == ("vllm", "cuda:0", 0.25)
    acfg = actors_main.parse_args(gpu_check.commands(gpu_check.parse_args(["--actor-gpu", "1"]), tmp_path)[1][3:])
    assert acfg.device == "cuda:1"


def test_verdict_fails_on_missing_steps_and_mismatch(gpu_check):
    a = gpu_check.parse_args(["--steps", "2", "--max-abs-diff", "0.01"])
    ok = {"backend": "gloo", "steps": [{"step": 1, "behaviour_logp_abs_diff": 0.001},
                                       {"step": 2, "behaviour_logp_abs_diff": 0.002}]}
    assert gpu_check.verdict(ok, a) == []
    bad = {"backend": None, "steps": [{"step": 1, "behaviour_logp_abs_diff": None}]}
    problems = gpu_check.verdict(bad, a)
    assert len(problems) == 3  # a missing step, a step without mismatch, no weight group
    # an actor on a second GPU must get NCCL: gloo there means the fast path was never taken
    two = gpu_check.parse_args(["--steps", "2", "--max-abs-diff", "0.01", "--actor-gpu", "1"])
    assert gpu_check.verdict(ok, two) == ["weight group backend gloo, expected nccl"]
    assert gpu_check.verdict(dict(ok, backend="nccl"), two) == []


def test_bad_arguments_are_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])


def test_embedded_model_converts_once_to_an_hf_directory(tmp_path, monkeypatch):
    from common.models import hf_directory, load_model

    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path))
    out = Path(hf_directory("embedded"))
    assert out.parent == tmp_path and (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed
    t0 = time.perf_counter()
    assert hf_directory("embedded") == str(out)  # cached: no second conversion
    assert time.perf_counter() - t0 < 1.0
    a, b = load_model("embedded"), load_model(str(out))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert hf_directory(str(out)) == str(out)  # an HF directory is used as it is
