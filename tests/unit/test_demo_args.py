"""The demo's flags reach the learner as the settings they name (README.md, "The demo")."""
import pytest

from common.config import load, parse_override
from learner.config import LearnerConfig
from learner.demo import learner_settings, parse_args


def _config(argv):
    overrides = {".".join(k): v for k, v in map(parse_override, learner_settings(parse_args(argv)))}
    return load(LearnerConfig, None, overrides)


def test_defaults_are_the_measured_ones():
    a = parse_args([])
    assert (a.task, a.steps, a.groups, a.n, a.temperature, a.lr, a.beta, a.grad_clip) == \
        ("arithmetic_small", 10, 8, 4, 0.6, 1e-5, 15.0, 0.0)
    assert (a.eval_prompts, a.eval_samples) == (128, 4)
    cfg = _config([])
    assert (cfg.groups_per_step, cfg.sampling.n, cfg.micro_batch_seqs) == (8, 4, 4)
    assert (cfg.lr, cfg.grad_clip, cfg.algo.algorithm, cfg.algo.beta) == (1e-5, 0.0, "flowrl", 15.0)
    assert cfg.sampling.temperature == 0.6 and cfg.sampling.top_p == 1.0


def test_flags_and_user_settings_reach_the_learner():
    cfg = _config(["--groups", "2", "--n", "8", "--lr", "3e-5", "--grad-clip", "1", "--beta", "5",
                   "--set", "max_staleness=2", "--set", "lr=2e-5"])
    assert (cfg.groups_per_step, cfg.sampling.n, cfg.micro_batch_seqs) == (2, 8, 8)
    assert (cfg.grad_clip, cfg.algo.beta, cfg.max_staleness) == (1.0, 5.0, 2)
    assert cfg.lr == 2e-5  # a --set comes after the flags, so it wins


@pytest.mark.parametrize("argv", [["--grad-clip", "-1"], ["--n", "1"], ["--groups", "0"], ["--steps", "0"]])
def test_bad_values_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)
