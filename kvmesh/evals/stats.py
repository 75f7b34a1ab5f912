"""Statistics for result summaries and comparisons, numpy only (no scipy).

- `proportion` / `wilson_interval`: accuracies with Wilson score intervals. Wilson rather than the normal
  approximation because benchmark accuracies of small models sit near 0 and small samples (10 HumanEval
  problems) are common; the Wilson interval stays inside [0, 1] and is not degenerate at 0.
- `mean_interval`: means (F1, tokens per task) with normal intervals.
- `mcnemar_exact` and `paired_bootstrap`: two systems on the same tasks (`kvmesh.evals.paired`). Pairing
  removes the task-to-task spread that two independent intervals would both carry.
- `across_seeds`: one figure under several seeds, with a Student-t interval (`t975`). Few seeds make it wide,
  as it should be; one seed makes it degenerate, and its n says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """95% (by default) Wilson score interval for a proportion successes / total."""
    if total <= 0:
        raise ValueError("an interval needs at least one trial")
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be between 0 and {total}, got {successes}")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, total: int) -> dict:
    low, high = wilson_interval(successes, total)
    return {"value": successes / total, "ci95": [low, high], "n": total}


def mean_interval(values: Sequence[float], z: float = Z95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean with a normal-approximation interval (for F1 and token counts); n = len(values).

    `bounds` clips the interval for bounded metrics (F1 lives in [0, 1]).
    """
    if not values:
        raise ValueError("a mean needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"value": mean, "ci95": [mean, mean], "n": 1}
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return {"value": mean, "ci95": [low, high], "n": n}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes, from the discordant pairs alone.

    `only_a`: tasks only system A got right; `only_b`: tasks only B got right. Under "A and B are equally good"
    each discordant pair is a fair coin, so the smaller count is Binomial(only_a + only_b, 1/2); the p-value
    doubles its lower tail (capped at 1). No discordant pair: no evidence either way, p = 1.
    """
    for name, count in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name} must be a count of discordant pairs (an int >= 0), got {count!r}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); each next binomial coefficient from the last, in exact integers
    for k in range(min(only_a, only_b)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)  # one rounding, in this division


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} needs a flat, non-empty list of numbers, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} got a NaN or infinite value; drop or fix those samples first")
    return array


def paired_bootstrap(differences: Sequence[float], seed: int = 0, resamples: int = 10_000) -> dict:
    """Mean of per-task paired differences (B - A on the same task) with a 95% percentile bootstrap interval.

    Resampling whole tasks keeps each pair together, so the interval reflects how much the two systems differ
    task by task, not how much tasks differ from one another. Seeded: the same input gives the same interval.
    One task gives a degenerate interval (n says so).
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    values = _finite(differences, "paired_bootstrap")
    n, mean = len(values), float(values.mean())
    if n == 1:
        return {"value": mean, "ci95": [mean, mean], "n": 1}
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # bounds memory at a few million indices for large runs
    means = np.concatenate(
        [
            values[rng.integers(0, n, size=(min(chunk, resamples - start), n))].mean(axis=1)
            for start in range(0, resamples, chunk)
        ]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return {"value": mean, "ci95": [float(low), float(high)], "n": n}


# Two-sided 95% Student-t quantiles (the 0.975 quantile) for 1..30 degrees of freedom, computed once to 15
# significant digits from the t distribution's CDF; tests/evals/test_stats.py checks them against a numerical
# integration of the t density.
T975 = (
    12.7062047361747, 4.30265272974946, 3.18244630528371, 2.77644510519779, 2.57058183563632,
    2.44691185114497, 2.36462425159279, 2.30600413520417, 2.26215716279821, 2.22813885198627,
    2.20098516009164, 2.17881282966723, 2.16036865646279, 2.14478668791780, 2.13144954555978,
    2.11990529922125, 2.10981557783332, 2.10092204024104, 2.09302405440831, 2.08596344726586,
    2.07961384472768, 2.07387306790403, 2.06865761041905, 2.06389856162803, 2.05953855275330,
    2.05552943864287, 2.05183051648029, 2.04840714179525, 2.04522964213270, 2.04227245630124,
)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (a two-sided 95% interval's multiplier).

    Beyond the table, the normal quantile plus the first four terms of its Cornish-Fisher expansion in 1/df
    (Abramowitz and Stegun 26.7.5), within 3e-8 of the exact value from df 31 on; the bare normal quantile
    would make a 31-seed interval 4% too narrow.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z95
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df**power for power, term in enumerate(terms, start=1))


def across_seeds(values: Sequence[float]) -> dict:
    """Mean of one figure measured under several seeds, with a Student-t 95% interval (n - 1 degrees of freedom).

    The seeds are the sample here: the interval says how much the figure moves from seed to seed, not how
    uncertain each seed's own figure is. One seed gives a degenerate interval [v, v] with n = 1: no spread is
    known, which is not the same as none.
    """
    array = _finite(values, "across_seeds")
    n, mean = len(array), float(array.mean())
    if n == 1:
        return {"mean": mean, "ci95": [mean, mean], "per_seed": array.tolist(), "n": 1}
    half = t975(n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "per_seed": array.tolist(), "n": n}


def paired_difference(both: int, only_first: int, only_second: int, neither: int, z: float = Z95) -> dict:
    """The difference of two paired proportions (first - second) with Newcombe's score interval (1998, method
    10: each proportion's Wilson interval, combined with the pairs' phi correlation).

    Counts are the 2x2 table of paired outcomes: tasks both got right, only the first, only the second,
    neither. A bootstrap of the per-task differences collapses when few tasks are discordant (4 discordant tasks
    out of 200, all one way, give a percentile interval that excludes 0 while the exact McNemar p is 0.125);
    this interval stays honest there and still narrows as n grows.
    """
    counts = (both, only_first, only_second, neither)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise ValueError(f"paired counts must be non-negative integers, got {counts}")
    n = sum(counts)
    if n == 0:
        raise ValueError("a paired difference needs at least one pair")
    first, second = both + only_first, both + only_second
    p1, p2 = first / n, second / n
    (l1, u1), (l2, u2) = wilson_interval(first, n, z), wilson_interval(second, n, z)
    margins = first * (n - first) * second * (n - second)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    value = p1 - p2
    return {"value": value, "ci95": [max(-1.0, value - below), min(1.0, value + above)], "n": n}
