"""The teams an Optima run compares, as team specs (`Team.from_spec`): the team as it is, the prompt-only
compact-protocol baseline, and the policy of an iteration (its adapter on every agent, sampling or greedy).

Specs, not `Team` objects, because each is saved beside the results it produced (`kvmesh eval --spec` reruns
any of them) and because a policy's adapter is a path that a later iteration overwrites nothing of.
"""

from __future__ import annotations

import copy

from kvmesh.evals.benchmarks import configured_team
from kvmesh.evals.benchmarks.base import Benchmark
from kvmesh.evals.runner import EvalConfig
from kvmesh.training.optima.config import COMPACT_PROTOCOL, OptimaConfig


def eval_config(config: OptimaConfig, **settings) -> EvalConfig:
    """The `kvmesh eval` settings an Optima run shares: its benchmark, data (and data seed) and batch size."""
    return EvalConfig(
        benchmark=config.task,
        data_path=config.data_path,
        seed=config.data_seed,
        batch_size=config.batch_size,
        **settings,
    )


def base_spec(config: OptimaConfig) -> dict:
    """The benchmark's team for the run (its agents, graph and decision maker), untrained, greedy."""
    team = configured_team(
        eval_config(
            config,
            model=config.model,
            topology=config.topology,
            agents=config.agents,
            max_new_tokens=config.max_new_tokens,
        )
    )
    return team.to_spec()


def spec_members(spec: dict) -> list[dict]:
    """The agent entries of a spec: its agents and, when it has one, its decision maker."""
    decision = spec.get("decision")
    return [*spec["agents"], *([decision] if isinstance(decision, dict) and "name" in decision else [])]


def compact_spec(spec: dict, benchmark: type[Benchmark]) -> dict:
    """The same team told to be terse and structured, and shown it (no training): Optima's prompt-only baseline.

    Each member's examples become the benchmark's terse ones for its role (`Benchmark.terse_examples`; kept as
    they are where it has none): SmolLM2-135M copies its examples' format and ignores an instruction alone."""
    compact = copy.deepcopy(spec)
    for member in spec_members(compact):
        member["system_prompt"] = (member.get("system_prompt") or "").rstrip() + "\n" + COMPACT_PROTOCOL
        terse = benchmark.terse_examples(member.get("role", ""))
        if terse:
            member["examples"] = [list(pair) for pair in terse]
    return compact


def policy_spec(spec: dict, adapter: str | None, temperature: float = 0.0) -> dict:
    """The team with `adapter` on every agent and the decision maker (None: the base model), at `temperature`."""
    policy = copy.deepcopy(spec)
    for member in spec_members(policy):
        member["temperature"] = temperature
        if adapter is not None:
            member["adapter"] = adapter
        else:
            member.pop("adapter", None)
    return policy
