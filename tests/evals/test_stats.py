import pytest

from kvmesh.evals.stats import mean_interval, proportion, wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert proportion(3, 4)["value"] == 0.75 and proportion(3, 4)["n"] == 4


def test_bad_counts_and_means():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="between 0 and 3"):
        wilson_interval(4, 3)
    single = mean_interval([2.0])
    assert single == {"value": 2.0, "ci95": [2.0, 2.0], "n": 1}
    spread = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert spread["value"] == 2.5 and spread["ci95"][0] < 2.5 < spread["ci95"][1]
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_bounded_means_stay_in_bounds():
    assert mean_interval([1.0, 1.0, 1.0, 0.0], bounds=(0, 1))["ci95"][1] == 1.0
    assert mean_interval([1.0, 1.0, 1.0, 0.0])["ci95"][1] > 1.0  # unbounded metrics are not clipped
