"""Bad config is refused at start with a message naming the field."""
import pytest

from actors.config import ActorConfig
from common.config import ConfigError, load
from learner.config import LearnerConfig


@pytest.mark.parametrize("overrides,field", [
    ({"algo.beta": 0.0}, "algo.beta"),
    ({"algo.beta": -1.0}, "algo.beta"),
    ({"algo.is_clip_low": 1.5, "algo.is_clip_high": 1.2}, "algo.is_clip_low"),
    ({"algo.algorithm": "ppo2"}, "algo.algorithm"),
    ({"algo.old_logp_source": "oracle"}, "algo.old_logp_source"),
    ({"sampling.n": 1}, "sampling.n"),
    ({"sampling.top_p": 0.0}, "sampling.top_p"),
    ({"zero_stage": 4}, "zero_stage"),
    ({"zero_stage": 3}, "zero_stage"),  # the broadcast needs whole parameters
    ({"sampling.top_p": 0.9}, "sampling.top_p"),  # engines can't record the full-softmax log-prob
    ({"weight_backend": "mpi"}, "weight_backend"),
    ({"resume": ""}, "resume"),
    ({"min_actors": 3, "actors": 2}, "min_actors"),
    ({"lr": "fast"}, "lr"),
    ({"algo.bogus": 1}, "algo.bogus"),
    ({"max_steps": 0, "epochs": 0}, "max_steps"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ({"lr_schedule": "cosine", "max_steps": 0, "epochs": 2}, "lr_schedule"),  # no known last step
    ({"lr_schedule": "cosine", "max_steps": 10, "lr_warmup_steps": 10}, "lr_warmup_steps"),
])
def test_learner_config_refused(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load(LearnerConfig, None, overrides)


def test_groups_must_split_over_ranks():
    cfg = load(LearnerConfig, None, {"groups_per_step": 3})
    with pytest.raises(ConfigError, match="groups_per_step"):
        cfg.validate(world_size=2)


def test_toml_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lr = 3e-6\n[algo]\nbeta = 10\nis_clip_high = inf\n[sampling]\nn = 8\n')
    cfg = load(LearnerConfig, str(p), {"sampling.max_tokens": 16})
    assert (cfg.lr, cfg.algo.beta, cfg.sampling.n, cfg.sampling.max_tokens) == (3e-6, 10.0, 8, 16)
    assert cfg.algo.is_clip == (0.8, None)
    assert load(LearnerConfig, None, {"algo.importance_weighting": False}).algo.is_clip is None


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(LearnerConfig, str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("overrides,field", [
    ({"engine": "tgi"}, "engine"), ({"n": 0}, "n"), ({"learner": "localhost:5555"}, "learner"),
    ({"reward_endpoint": "http://x"}, "reward_endpoint"),
    # 4 vLLM actors on one GPU, each asking for 0.9 of it: every one but the first fails at start
    ({"engine": "vllm", "device": "cuda:0", "n": 4}, "gpu_memory_utilization"),
])
def test_actor_config_refused(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load(ActorConfig, None, overrides)


@pytest.mark.parametrize("overrides", [
    {"engine": "vllm", "device": "cuda:0", "n": 4, "gpu_memory_utilization": 0.2},
    {"engine": "vllm", "device": "cuda", "n": 4},  # actor i on GPU i
])
def test_actors_may_share_a_gpu_within_its_memory(overrides):
    load(ActorConfig, None, overrides)
