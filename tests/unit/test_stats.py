import pytest

from rrm_ray.stats import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(32, 64)
    assert lo == pytest.approx(0.3810, abs=1e-4) and hi == pytest.approx(0.6190, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


@pytest.mark.parametrize("args", [(1, 0), (-1, 5), (6, 5)])
def test_wilson_interval_rejects_impossible_counts(args):
    with pytest.raises(ValueError, match="wilson_interval"):
        wilson_interval(*args)
