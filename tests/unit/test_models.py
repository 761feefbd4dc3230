"""Models whose forward changes the logits after the lm_head (Gemma 2's soft-capping,
Cohere's scale, Granite's divisor) are refused at start: the learner scores samples as
log_softmax(lm_head(hidden) / T), so every importance weight and the mismatch would be off."""
import json
import shutil

import pytest

from common.models import LOGIT_TRANSFORMS, ModelLoadError, model_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from common.models import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def _with(tiny, tmp_path, **fields):
    out = tmp_path / "model"
    shutil.copytree(tiny, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(cfg, **fields)))
    return str(out)


@pytest.mark.parametrize("key,value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625),
                                       ("logits_scaling", 8.0)])
def test_a_model_that_transforms_its_logits_is_refused(tiny, tmp_path, key, value, capsys):
    from learner.__main__ import main

    model = _with(tiny, tmp_path, **{key: value})
    with pytest.raises(ModelLoadError, match=key):
        model_source(model)
    capsys.readouterr()
    assert main(["--model", model, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err


def test_neutral_values_pass(tiny, tmp_path):
    assert {k for k, _ in LOGIT_TRANSFORMS} == {"final_logit_softcapping", "logit_scale", "logits_scaling"}
    model = _with(tiny, tmp_path, final_logit_softcapping=None, logit_scale=1.0, logits_scaling=1.0)
    assert model_source(model) == (model, {})
