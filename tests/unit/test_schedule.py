"""The learning-rate schedule as a pure function of the optimizer step."""
import math

import pytest

from learner.schedule import lr_factor


def test_warmup_rises_linearly_from_the_first_step():
    assert [lr_factor(s, 4, "constant", 100, 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_warmup_is_the_full_rate_at_once():
    assert lr_factor(0, 0, "constant", 100, 0.0) == 1.0


def test_cosine_falls_from_the_peak_to_the_floor_one_past_the_last_step():
    # warm-up 2, 12 steps: step 2 is the peak, step 7 halfway down, step 12 (one past the
    # last) the floor, which holds after
    f = [lr_factor(s, 2, "cosine", 12, 0.1) for s in range(14)]
    assert f[:3] == [0.5, 1.0, 1.0]
    assert f[7] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[11] > 0.1 and f[12] == pytest.approx(0.1) and f[13] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[2:12], f[3:13]))  # strictly falling in between
    assert lr_factor(3, 0, "cosine", 9, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))


def test_the_last_step_still_moves_with_a_zero_floor():
    assert lr_factor(3, 3, "cosine", 4, 0.0) == 1.0
    assert 0 < lr_factor(9, 0, "cosine", 10, 0.0) < 0.05


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="linear"):
        lr_factor(5, 0, "linear", 10, 0.0)
