"""Bring-your-own prompts: a .jsonl task file is read whole, and a bad record is refused
at the learner's start with the file and line, never by an actor mid-run."""
import json
import re

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


def _checked(**fields) -> LearnerConfig:
    """What the learner does at start: load and validate, then read the files the config names."""
    cfg = load(LearnerConfig, None, fields)
    cfg.check_inputs()
    return cfg


def test_learner_refuses_a_bad_file_at_start(tmp_path):
    bad = _write(tmp_path, ['{"prompt": "x", "answer": "4", "kind": "poetry"}'])
    with pytest.raises(ConfigError, match=r"^tasks: .*tasks.jsonl:1: kind 'poetry'"):
        _checked(tasks=str(bad))
    with pytest.raises(ConfigError, match=r"^tasks: .*neither a built-in task"):
        _checked(tasks=str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no records"):
        _checked(tasks=str(tmp_path / "empty.jsonl"))
    small = _write(tmp_path, [json.dumps({"prompt": f"{i}?", "answer": str(i)}) for i in range(3)])
    with pytest.raises(ConfigError, match="has 3 prompts, fewer than groups_per_step 4"):
        _checked(tasks=str(small), groups_per_step=4)
    # num_prompts is for built-in tasks: a file of 3 is fine for 2 groups a step
    assert _checked(tasks=str(small), groups_per_step=2, num_prompts=1).tasks == str(small)
    # a reference the scorer cannot read: JSON, but not a test spec / not a list of integers
    for rec in ({"prompt": "p", "answer": json.dumps({"asserts": "", "cases": []}), "kind": "code"},
                {"prompt": "p", "answer": '["seven"]', "kind": "choice"}):
        path = _write(tmp_path, [json.dumps({"prompt": f"{i}?", "answer": str(i)}) for i in range(4)] + [json.dumps(rec)])
        with pytest.raises(ConfigError, match=rf"^tasks: .*tasks.jsonl record 5 \({rec['kind']}\): "):
            _checked(tasks=str(path))
    # validate() alone reads no file: a config naming a path that exists only in a pod is valid
    assert load(LearnerConfig, None, {"tasks": "/models/prompts/train.jsonl"}).tasks == "/models/prompts/train.jsonl"


def _parquet(tmp_path, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_records_in_our_layout(tmp_path):
    path = _parquet(tmp_path, [{"prompt": "2+2?", "answer": "4", "kind": None},
                               {"prompt": "Prime?", "answer": "[2, 3]", "kind": "choice"}])
    assert load_tasks(str(path), n=1, seed=0) == [TaskItem("2+2?", "4", "math"), TaskItem("Prime?", "[2, 3]", "choice")]


def test_verl_layout_loads_as_its_preprocessing_writes_it(tmp_path):
    """veRL's gsm8k.py writes data_source, prompt (chat messages), ability, reward_model
    {style, ground_truth} and extra_info; a ground truth may be a number."""
    rows = [{"data_source": "openai/gsm8k", "ability": "math",
             "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "6 * 7?"}],
             "reward_model": {"style": "rule", "ground_truth": "42"}, "extra_info": {"split": "train", "index": 0}},
            {"data_source": "x", "ability": "math", "prompt": [{"role": "user", "content": "1 + 1?"}],
             "reward_model": {"style": "rule", "ground_truth": "2"}, "extra_info": {"split": "train", "index": 1}}]
    want = [TaskItem((("system", "Be brief."), ("user", "6 * 7?")), "42", "math"),
            TaskItem((("user", "1 + 1?"),), "2", "math")]
    assert load_tasks(str(_parquet(tmp_path, rows)), n=1, seed=0) == want
    jsonl = _write(tmp_path, [json.dumps(r) for r in rows] + [json.dumps(
        {"prompt": "3 + 3?", "reward_model": {"ground_truth": 6}})])
    assert load_tasks(str(jsonl), n=1, seed=0) == want + [TaskItem("3 + 3?", "6", "math")]


@pytest.mark.parametrize("rec,error", [
    ({"prompt": "x", "ability": "code", "reward_model": {"ground_truth": "{}"}}, "only math is read"),
    ({"prompt": "x", "reward_model": {"ground_truth": ["4", "four"]}}, "ground_truth must be a string or a number"),
    ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "4"}}, "list of {role, content} messages"),
    ({"prompt": [], "reward_model": {"ground_truth": "4"}}, "list of {role, content} messages"),
])
def test_a_bad_verl_record_is_refused_with_its_line(tmp_path, rec, error):
    path = _write(tmp_path, [json.dumps(rec)])
    with pytest.raises(ValueError, match=f"tasks.jsonl:1: .*{re.escape(error)}"):
        load_tasks(str(path), n=1, seed=0)


def test_a_chat_prompt_is_encoded_with_the_chat_template(tmp_path):
    from common.models import build_tiny_model, encode_prompt, load_tokenizer
    tok = load_tokenizer(build_tiny_model(tmp_path / "tiny"))
    chat = (("system", "Be brief."), ("user", "6*7?"))
    assert encode_prompt(tok, chat) == tok("Be brief.\n\n6*7?")["input_ids"]  # no template: the contents
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert tok.decode(encode_prompt(tok, chat)) == "<system>Be brief.<user>6*7?<assistant>"
    assert tok.decode(encode_prompt(tok, "6*7?")) == "<user>6*7?<assistant>"
