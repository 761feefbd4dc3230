"""The end-to-end run of tests/integration/test_end_to_end.py with the embedded
SmolLM2-135M-Instruct instead of a tiny random model (minutes on 2 cores)."""
import pytest

from tests.integration.test_end_to_end import run_three_steps


@pytest.mark.slow
def test_embedded_model_three_steps(tmp_path):
    run_three_steps(tmp_path, "embedded", max_tokens=16, timeout_s=900)
