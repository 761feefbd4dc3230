"""learner.eval: the pass@k estimator and diversity figures on hand-computed
values, checkpoint resolution, and a tiny end-to-end evaluation of a tiny random
model (JSON fields and their ranges).

Run: .venv/bin/python -m pytest tests/unit/test_eval.py -q
"""
import json
import math

import pytest

from common.models import ModelLoadError, build_tiny_model
from learner import eval as ev


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25),
    (4, 1, 2, 1 - 3 / 6),            # 1 - C(3,2)/C(4,2)
    (16, 2, 4, 1 - 1001 / 1820),     # 1 - C(14,4)/C(16,4)
    (16, 0, 16, 0.0),
    (16, 1, 16, 1.0),                # n - c < k: some draw of k always has the correct one
    (10, 10, 1, 1.0),
    (8, 3, 1, 3 / 8),                # pass@1 is the accuracy
])
def test_pass_at_k(n, c, k, expected):
    assert ev.pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        ev.pass_at_k(n, c, k)


def test_entropy_and_distinct_n():
    assert ev.entropy_bits(["a"] * 4) == 0.0
    assert ev.entropy_bits(["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert ev.entropy_bits([1, 2, 3, 4]) == pytest.approx(2.0)
    assert ev.entropy_bits(["a", "a", "a", "b"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert ev.distinct_n(seqs, 1) == pytest.approx(4 / 6)
    assert ev.distinct_n(seqs, 2) == pytest.approx(3 / 4)
    assert ev.distinct_n([[1]], 2) == 0.0


def test_prompt_stats_counts_distinct_correct_answers():
    ref_ok = {r"\boxed{11}": 1.0, r"\boxed{13}": 1.0, "say 13": 1.0, r"\boxed{12}": 0.0, "none": 0.0}
    texts = list(ref_ok)
    s = ev.prompt_stats("choice", texts, [[1, 2], [1, 3], [1, 2], [4], []], list(ref_ok.values()))
    assert s["accuracy"] == pytest.approx(3 / 5) and s["correct"] == 3
    assert s["distinct_correct"] == 2  # 11 and 13; the second 13 is not new
    assert s["answer_entropy"] == pytest.approx(ev.entropy_bits([11, 13, 13, 12, "<none>"]))
    assert s["no_answer"] == pytest.approx(1 / 5)
    assert s["pass@1"] == pytest.approx(3 / 5) and s["pass@4"] == 1.0 and "pass@16" not in s
    assert s["answers"] == {"13": 2, "11": 1, "12": 1, "None": 1}
    math_s = ev.prompt_stats("math", [r"\boxed{4}", "so 4", r"\boxed{5}"], [[1], [1], [2]], [1.0, 1.0, 0.0])
    assert math_s["distinct_correct"] == 1


def test_resolve_checkpoint(tmp_path):
    (tmp_path / "ckpt" / "policy").mkdir(parents=True)
    (tmp_path / "ckpt" / "policy" / "config.json").write_text("{}")
    assert ev.resolve_checkpoint(str(tmp_path / "ckpt")) == str(tmp_path / "ckpt" / "policy")
    assert ev.resolve_checkpoint(str(tmp_path / "ckpt" / "policy")) == str(tmp_path / "ckpt" / "policy")
    assert ev.resolve_checkpoint("embedded") == "embedded"
    with pytest.raises(ModelLoadError):
        ev.resolve_checkpoint(str(tmp_path))


def test_end_to_end_on_a_tiny_model(tmp_path, capsys):
    build_tiny_model(tmp_path / "run" / "checkpoint-final" / "policy")
    out = tmp_path / "eval.json"
    rc = ev.main(["--checkpoint", str(tmp_path / "run" / "checkpoint-final"), "--tasks", "arithmetic,many_answers",
                  "--num-prompts", "3", "--samples", "4", "--max-tokens", "8", "--batch-prompts", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "avg@4" in printed and "many_answers" in printed and "distinct correct" in printed
    r = json.loads(out.read_text())
    assert (r["samples"], r["temperature"], r["top_p"]) == (4, 0.6, 0.95)
    assert set(r["tasks"]) == {"arithmetic", "many_answers"}
    for t in r["tasks"].values():
        assert t["prompts"] == 3 and len(t["per_prompt"]) == 3
        for key in ("mean_accuracy", "pass@1", "pass@4", "no_answer", "distinct_1", "distinct_2"):
            assert 0.0 <= t[key] <= 1.0, key
        assert "pass@16" not in t  # k never exceeds the samples
        assert t["pass@1"] == pytest.approx(t["mean_accuracy"])  # binary scores
        assert t["pass@1"] <= t["pass@4"]
        assert 0.0 <= t["distinct_correct"] <= 4
        assert 0.0 <= t["answer_entropy"] <= 2.0  # log2(4 samples)
        assert 0 < t["mean_tokens"] <= 8
        for p in t["per_prompt"]:
            assert sum(p["answers"].values()) == 4


def test_bad_task_or_checkpoint_is_one_line(tmp_path, capsys):
    assert ev.main(["--checkpoint", str(tmp_path), "--tasks", "arithmetic"]) == 2
    assert ev.main(["--checkpoint", "embedded", "--tasks", "no_such_task"]) == 2
    err = capsys.readouterr().err
    assert err.count("learner.eval: error:") == 2


def test_mean_and_se_and_paired_gain_by_hand():
    mean, se = ev.mean_and_se([0.0, 0.5, 1.0, 0.5])
    assert mean == 0.5 and se == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 0) / 3 / 4))
    assert ev.mean_and_se([0.25]) == (0.25, 0.0)
    # the same prompts before and after: the error is that of the differences (0.25, 0.25, 0.5)
    gain, gain_se = ev.paired_gain([0.0, 0.5, 0.25], [0.25, 0.75, 0.75])
    assert gain == pytest.approx(1 / 3) and gain_se == pytest.approx(math.sqrt(((1 / 12) ** 2 * 2 + (1 / 6) ** 2) / 2 / 3))
    with pytest.raises(ValueError):
        ev.paired_gain([0.0], [0.0, 1.0])
    with pytest.raises(ValueError):
        ev.mean_and_se([])
