import itertools
import math

import numpy as np
import pytest

from kvmesh.evals.stats import (
    T975,
    Z95,
    across_seeds,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    proportion,
    t975,
    wilson_interval,
)


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


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * (1/2)^5
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0  # capped at 1; no discordant pair
    assert mcnemar_exact(3, 11) == mcnemar_exact(11, 3)
    assert 0.0 < mcnemar_exact(5000, 5100) < 1.0  # large runs neither overflow nor underflow to 0


def test_mcnemar_refuses_what_is_not_a_count():
    with pytest.raises(ValueError, match="only_b must be a count"):
        mcnemar_exact(2, -1)
    with pytest.raises(ValueError, match="only_a must be a count"):
        mcnemar_exact(1.5, 2)


def test_paired_bootstrap_interval_is_around_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1.0, 20), rng.normal(0.3, 1.0, 2000)
    for values in (small, large):
        result = paired_bootstrap(values.tolist())
        assert result["value"] == pytest.approx(values.mean()) and result["n"] == len(values)
        assert result["ci95"][0] < result["value"] < result["ci95"][1]
    width = {n: paired_bootstrap(v.tolist())["ci95"] for n, v in ((20, small), (2000, large))}
    assert width[2000][1] - width[2000][0] < (width[20][1] - width[20][0]) / 3


def test_paired_bootstrap_matches_the_normal_interval_of_a_mean_on_many_tasks():
    values = np.random.default_rng(2).normal(5.0, 2.0, 400)
    low, high = paired_bootstrap(values.tolist())["ci95"]
    normal_half = Z95 * values.std(ddof=1) / math.sqrt(len(values))  # what the interval of a mean should be
    assert (high - low) / 2 == pytest.approx(normal_half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * normal_half)


def test_paired_bootstrap_is_reproducible_with_its_seed():
    values = [0.0, 1.0, -1.0, 1.0, 0.0, 1.0, 1.0, -1.0, 0.0, 1.0]
    assert paired_bootstrap(values, seed=3) == paired_bootstrap(values, seed=3)
    assert paired_bootstrap(values, seed=3)["ci95"] != paired_bootstrap(values, seed=4, resamples=999)["ci95"]
    assert paired_bootstrap([2.5]) == {"value": 2.5, "ci95": [2.5, 2.5], "n": 1}
    assert paired_bootstrap([1.0] * 7)["ci95"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([])
    with pytest.raises(ValueError, match="NaN or infinite"):
        paired_bootstrap([1.0, float("nan")])


def _t_mass_from_zero(q: float, df: int, points: int = 100_001) -> float:
    """P(0 < T < q) for Student's t with `df` degrees of freedom, by Simpson's rule on its density."""
    t = np.linspace(0.0, q, points)
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_scale - (df + 1) / 2 * np.log1p(t * t / df))
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return float((q / (points - 1)) / 3 * (weights @ density))


@pytest.mark.parametrize("df", [*range(1, len(T975) + 1), 31, 45, 100, 1000])
def test_t_quantiles_match_a_numerical_integration_of_the_t_density(df):
    # a quantile off by 1e-7 moves this mass by about 5e-9 (the density near 2 is about 0.06)
    assert _t_mass_from_zero(t975(df), df) == pytest.approx(0.475, abs=2e-9)


def test_t_quantiles_fall_towards_the_normal_one():
    quantiles = [t975(df) for df in range(1, 200)]
    assert all(a > b for a, b in itertools.pairwise(quantiles)) and quantiles[-1] > Z95
    assert t975(10**6) == pytest.approx(Z95, abs=1e-5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def test_across_seeds_uses_a_t_interval_on_n_minus_one_degrees():
    result = across_seeds([1.0, 2.0, 3.0])  # standard deviation 1
    half = t975(2) / math.sqrt(3)
    assert result["mean"] == 2.0 and result["n"] == 3 and result["per_seed"] == [1.0, 2.0, 3.0]
    assert result["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert across_seeds([1, 1, 1])["ci95"] == [1.0, 1.0]
    assert across_seeds([0.4]) == {"mean": 0.4, "ci95": [0.4, 0.4], "per_seed": [0.4], "n": 1}
    with pytest.raises(ValueError, match="non-empty"):
        across_seeds([])


def test_the_paired_difference_interval_flips_with_the_runs_and_narrows_with_n():
    from kvmesh.evals.stats import paired_difference

    ahead, behind = paired_difference(40, 12, 4, 44), paired_difference(40, 4, 12, 44)
    assert ahead["value"] == pytest.approx(0.08) and behind["value"] == pytest.approx(-0.08)
    assert behind["ci95"] == pytest.approx([-ahead["ci95"][1], -ahead["ci95"][0]])
    wide, narrow = paired_difference(4, 3, 1, 2), paired_difference(400, 300, 100, 200)
    assert wide["value"] == pytest.approx(narrow["value"])
    assert narrow["ci95"][1] - narrow["ci95"][0] < (wide["ci95"][1] - wide["ci95"][0]) / 5
    assert paired_difference(0, 5, 0, 0)["ci95"][0] >= -1 and paired_difference(0, 5, 0, 0)["ci95"][1] <= 1
    with pytest.raises(ValueError, match="at least one pair"):
        paired_difference(0, 0, 0, 0)
