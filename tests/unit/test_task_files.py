"""Bring-your-own prompts: a .jsonl task file is read whole, and a bad record is refused
at the learner's start with the file and line, never by an actor mid-run."""
import json

import pytest

from common.config import ConfigError, load
from common.data import TaskItem, load_tasks
from learner.config import LearnerConfig


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_records_of_every_kind_are_read_whole(tmp_path):
    tests = json.dumps({"tests": [{"input": "1\n", "output": "2"}]})
    path = _write(tmp_path, [json.dumps({"prompt": "2+2?", "answer": "4"}), "",
                             json.dumps({"prompt": "Prime?", "answer": "[2, 3, 5]", "kind": "choice"}),
                             json.dumps({"prompt": "Add one.", "answer": tests, "kind": "code"})])
    assert load_tasks(str(path), n=1, seed=0) == [TaskItem("2+2?", "4", "math"),
                                                  TaskItem("Prime?", "[2, 3, 5]", "choice"),
                                                  TaskItem("Add one.", tests, "code")]


@pytest.mark.parametrize("line,error", [
    ('{"prompt": "x", "answer": ', "not JSON"),
    ('["x", "4"]', "needs string fields"),
    ('{"prompt": "x"}', "needs string fields"),
    ('{"prompt": "x", "answer": 4}', "needs string fields"),
    ('{"prompt": "x", "answer": "4", "kind": "poetry"}', "kind 'poetry'"),
    ('{"prompt": "x", "answer": "[2, 3", "kind": "choice"}', "a 'choice' answer must be JSON"),
])
def test_a_bad_record_is_refused_with_file_and_line(tmp_path, line, error):
    path = _write(tmp_path, [json.dumps({"prompt": "ok", "answer": "1"}), line])
    with pytest.raises(ValueError, match=f"tasks.jsonl:2: {error}"):
        load_tasks(str(path), n=1, seed=0)


def test_learner_refuses_a_bad_file_at_start(tmp_path):
    bad = _write(tmp_path, ['{"prompt": "x", "answer": "4", "kind": "poetry"}'])
    with pytest.raises(ConfigError, match=r"^tasks: .*tasks.jsonl:1: kind 'poetry'"):
        load(LearnerConfig, None, {"tasks": str(bad)})
    with pytest.raises(ConfigError, match=r"^tasks: .*neither a built-in task"):
        load(LearnerConfig, None, {"tasks": str(tmp_path / "missing.jsonl")})
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no records"):
        load(LearnerConfig, None, {"tasks": str(tmp_path / "empty.jsonl")})
    small = _write(tmp_path, [json.dumps({"prompt": f"{i}?", "answer": str(i)}) for i in range(3)])
    with pytest.raises(ConfigError, match="has 3 prompts, fewer than groups_per_step 4"):
        load(LearnerConfig, None, {"tasks": str(small), "groups_per_step": 4})
    # num_prompts is for built-in tasks: a file of 3 is fine for 2 groups a step
    assert load(LearnerConfig, None, {"tasks": str(small), "groups_per_step": 2, "num_prompts": 1}).tasks == str(small)
