"""Statistics for result summaries: proportions with Wilson score intervals, means with normal intervals.

Wilson rather than the normal approximation because benchmark accuracies of small models sit near 0 and small
samples (10 HumanEval problems) are common; the Wilson interval stays inside [0, 1] and is not degenerate at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
