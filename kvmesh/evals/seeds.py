"""Several seeds of one run: each seed a resumable run of its own in `OUT/seed-N`, and its figures across seeds.

    summary, runs = run_seeds([0, 1, 2], out, run_one, figures_of, config=asdict(config))   # OUT/seeds.json
    # run_one(seed, OUT/seed-N) -> a seed's result; figures_of(result) -> {name: number}

Each seed runs to the end before the next starts and is resumable on its own, so a killed three-seed run keeps
every finished seed and the finished part of the one it was in; running the command again continues. The
summary gives, per figure, the mean with a Student-t 95% interval across seeds beside every seed's own value
(`kvmesh.evals.stats.across_seeds`): the interval says how much a figure moves with the seed that trained it,
which one run cannot show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from kvmesh.agents.usage import format_rows
from kvmesh.evals.stats import across_seeds
from kvmesh.runs import write_json

SEEDS_FILE = "seeds.json"
R = TypeVar("R")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """`seeds` as a list, refusing an empty list, repeats and negative or non-integer values."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"--seeds takes non-negative integers, got {bad}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds lists {repeated} more than once; each seed is one run")
    return seeds


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def figures_across_seeds(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict]:
    """{figure: across_seeds(its value under each seed)}, in first-seen order; every seed must have every figure
    (a seed scored on test beside one that was not is two different runs, not one figure's spread)."""
    names = list(dict.fromkeys(name for figures in per_seed.values() for name in figures))
    for seed, figures in per_seed.items():
        missing = [name for name in names if name not in figures]
        if missing:
            raise ValueError(f"seed {seed} lacks {', '.join(missing[:3])}: run every seed with the same settings")
    return {
        name: across_seeds([figures[name] for figures in per_seed.values()]) | {"seeds": list(per_seed)}
        for name in names
    }


def write_seed_summary(
    out: str | Path, per_seed: Mapping[int, Mapping[str, float]], filename: str = SEEDS_FILE, **extra
) -> dict:
    """Write OUT/`filename` (seeds.json): the seeds, every figure across them, each seed's figures and `extra`
    (the configuration, what was compared); returns what it wrote."""
    summary = {"seeds": list(per_seed), "across_seeds": figures_across_seeds(per_seed), "per_seed": dict(per_seed)}
    summary |= extra
    write_json(Path(out) / filename, {**summary, "per_seed": {str(k): v for k, v in per_seed.items()}})
    return summary


def run_seeds(
    seeds: Sequence[int],
    out: str | Path,
    run_one: Callable[[int, Path], R],
    figures_of: Callable[[R], Mapping[str, float]],
    **extra,
) -> tuple[dict, dict[int, R]]:
    """Run `run_one(seed, OUT/seed-N)` for each seed in turn, then write OUT/seeds.json from each result's
    `figures_of` (and `extra`); returns that summary and each seed's result."""
    runs = {seed: run_one(seed, seed_folder(out, seed)) for seed in check_seeds(seeds)}
    summary = write_seed_summary(out, {seed: figures_of(result) for seed, result in runs.items()}, **extra)
    return summary, runs


def seeds_table(summary: dict, title: str = "figure") -> list[str]:
    """The lines of a table of every figure across seeds (`write_seed_summary`'s result)."""
    rows = [(title, "mean [95% interval across seeds] (each seed)")]
    rows += [(name, format_across(figure)) for name, figure in summary["across_seeds"].items()]
    return format_rows(rows)


def format_across(figure: dict, digits: int = 3) -> str:
    """ "0.412 [0.371, 0.453] (0.400, 0.390, 0.445)": the mean, its interval and each seed's value."""
    low, high = figure["ci95"]
    each = ", ".join(f"{v:.{digits}f}" for v in figure["per_seed"])
    return f"{figure['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] ({each})"
