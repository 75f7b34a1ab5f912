"""The benchmarks, one file each on the `Benchmark` protocol (`base.py`): GSM8K, HumanEval, InfoQA and InfoQA on
research projects (`infoqa-projects`, a domain no prompt or designer was tuned on). Splits: `splits.py`.

    benchmark = make_benchmark("infoqa")            # by name; GSM8K reads --data-path or KVMESH_GSM8K_PATH
    BENCHMARKS.register("mine", Mine)               # or another package's `kvmesh.benchmarks` entry point
    samples = benchmark.samples("test")             # stable ids; Sample.task is a team Task
    score = benchmark.score(sample, answer)         # correct, extracted answer, per-sample metrics
    team = benchmark_team("infoqa", "smollm2-135m", "chain", agents=3)   # its default team
    train, val = design_splits("infoqa", 128, 48)   # disjoint samples for loops that learn

Primary metric (`correct`, and `accuracy` in summaries): GSM8K flexible extraction (strict beside it),
HumanEval pass@1, InfoQA exact match (token F1 beside it).
"""

from __future__ import annotations

from kvmesh.agents.decision import DECISION_METHOD
from kvmesh.agents.team import Team
from kvmesh.evals.benchmarks.base import SINGLE, Benchmark, BenchmarkOptions, Sample, Score, team_for
from kvmesh.evals.benchmarks.gsm8k import GSM8K
from kvmesh.evals.benchmarks.humaneval import HumanEval
from kvmesh.evals.benchmarks.infoqa import InfoQA, short_answer
from kvmesh.plugins import PluginNotAvailableError, Registry


class BenchmarkNotAvailableError(PluginNotAvailableError):
    """A benchmark name no entry has; the message lists the benchmarks there are and how to add one."""


# name -> class; kvmesh's own in code (see kvmesh.plugins), other packages' as `kvmesh.benchmarks` entry points.
# Iterating it gives the names (configs take it as their `choices`).
BENCHMARKS: Registry[type[Benchmark]] = Registry(
    "benchmark",
    "kvmesh.benchmarks",
    {
        "gsm8k": "kvmesh.evals.benchmarks.gsm8k:GSM8K",
        "humaneval": "kvmesh.evals.benchmarks.humaneval:HumanEval",
        "infoqa": "kvmesh.evals.benchmarks.infoqa:InfoQA",
        "infoqa-projects": "kvmesh.evals.benchmarks.infoqa_projects:InfoQAProjects",
    },
    error=BenchmarkNotAvailableError,
    adder="kvmesh.evals.benchmarks.BENCHMARKS.register(name, cls)",
)


def benchmark_class(name: str) -> type[Benchmark]:
    """The class of benchmark `name`; `BenchmarkNotAvailableError` when there is none."""
    return BENCHMARKS.get(name)


def make_benchmark(
    name: str, data_path: str | None = None, seed: int = 0, allow_code_execution: bool = False, shards: str = "own"
) -> Benchmark:
    """Benchmark `name` for a run's settings; each benchmark takes the ones it uses (`Benchmark.from_options`)."""
    return benchmark_class(name).from_options(BenchmarkOptions(data_path, seed, allow_code_execution, shards))


def benchmark_team(name: str, *args, **options) -> Team:
    """The default team for benchmark `name`; arguments as `kvmesh.evals.benchmarks.base.team_for`."""
    return team_for(benchmark_class(name), *args, **options)


def configured_team(config) -> Team:
    """The benchmark's default team for a run's settings (an `EvalConfig`, or `kvmesh design train`'s): its
    benchmark, model, topology, agents, rounds, temporal edges, decision, token cap, seed, code execution, channel."""
    return benchmark_team(
        config.benchmark,
        config.model,
        config.topology,
        config.agents,
        config.rounds,
        getattr(config, "decision", DECISION_METHOD),
        config.max_new_tokens,
        seed=config.seed,
        code_execution=config.allow_code_execution,
        channel=config.channel,
        temporal=getattr(config, "temporal", None),
    )


def design_splits(
    benchmark: str,
    train_size: int,
    val_size: int,
    seed: int = 0,
    data_path: str | None = None,
    allow_code_execution: bool = False,
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples for designing a team on `benchmark`; the two never share an id, and the
    test set is the benchmark's own, minus anything a designer saw."""
    if train_size < 1 or val_size < 0:
        raise ValueError(f"need train_size >= 1 and val_size >= 0, got {train_size} and {val_size}")
    source = make_benchmark(benchmark, data_path, seed, allow_code_execution)
    return source.design_splits(train_size, val_size, seed)


__all__ = [
    "BENCHMARKS",
    "GSM8K",
    "SINGLE",
    "Benchmark",
    "BenchmarkNotAvailableError",
    "BenchmarkOptions",
    "HumanEval",
    "InfoQA",
    "Sample",
    "Score",
    "benchmark_class",
    "benchmark_team",
    "configured_team",
    "design_splits",
    "make_benchmark",
    "short_answer",
]
