"""REINFORCE over sampled graphs: training a graph policy (a topology designer), validation, checkpoints, resume.

    normaliser = mean cost of the team's own graph on the first batch       (unless configured)
    for each update:
        tasks   = the next batch of the (seeded, per-epoch shuffled) training set
        graphs  = policy.sample_batch(tasks)                     one DAG per task, with log p(G)
        results = team.run_batch(tasks, graphs=graphs)           ONE batched pass through the runtime
        u       = utility(metric(example, result), cost)         `kvmesh.training.reward`, cost in --cost's unit
        loss    = −mean((u − baseline)·log p(G)) + the policy's regularisers
        every `eval_every` updates and after the last: the deterministic graphs on the validation set;
        the best validation utility is what the policy keeps

The loop knows a policy only through `GraphPolicy` (the designers of `kvmesh.topology` implement it).

Every finished update is in `out/checkpoint.pt` (weights, optimiser, sampler state, history), written
atomically (`kvmesh.runs`), so a run killed at any point resumes from its last update with `resume=True` and
loses at most the update in flight; the checkpoint also holds the settings a resume is checked against, so a
run that fails before its first update leaves no settings behind. Each rollout runs the real team: nothing is
simulated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.graph.graph import CommGraph
from kvmesh.runs import (
    Comparison,
    Opened,
    Wording,
    check_resume,
    holds_results,
    open_config,
    start_run,
    write_atomic,
    write_json,
)
from kvmesh.training.examples import example_id, example_task
from kvmesh.training.reward import COST_UNITS, COSTS, task_cost, utilities, utility

CHECKPOINT = "checkpoint.pt"
DESIGNER_RUN = Wording(
    "designer run",
    "pass resume=True, or --resume",
    "folder",
    "another designer or configuration, or other training or validation examples (changed: {changed})",
)
Metric = Callable[[Any, Any], float]  # (example, TeamResult) -> score in [0, 1]


@dataclass
class ReinforceConfig:
    """Settings of the REINFORCE loop.

    Args:
        steps: REINFORCE updates; each samples one graph per task of a batch and runs them all in one
            batched pass.
        batch_size: training tasks per update.
        lr: Adam learning rate.
        cost: what a task's run costs, in the unit you pay: tokens (prompt and completion), generated (completion
            tokens), time (seconds of the task's model calls, as the runtime measured them) or kv-bytes (KV cache
            moved by latent channels).
        token_weight: λ in utility = score − λ·cost / token_normalizer (named for the first cost, tokens).
        token_normalizer: the cost per task that costs λ, in the cost's unit; 0 measures it as the mean cost of
            the team's own graph on the first training batch.
        eval_every: validate the evaluation graph every this many updates and after the last; the best
            validation utility is kept.
        seed: seeds graph sampling and the order of training tasks.
    """

    steps: int = 24
    batch_size: int = 16
    lr: float = 0.01
    cost: str = field(default="tokens", metadata={"choices": COSTS})
    token_weight: float = 0.5
    token_normalizer: float = 0.0
    eval_every: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "batch_size"):
            minimum = 0 if name == "steps" else 1
            if getattr(self, name) < minimum:
                raise ConfigError(f"{{{name}}} must be at least {minimum}, got {getattr(self, name)}")
        if self.token_weight < 0 or self.token_normalizer < 0:
            raise ConfigError("{token_weight} and {token_normalizer} must be >= 0")
        if self.cost not in COSTS:
            raise ConfigError(f"{{cost}} must be one of {', '.join(COSTS)}, got {self.cost!r}")


class GraphPolicy(Protocol):
    """What the loop trains: a policy that samples a graph per task and designs one deterministically."""

    kind: str
    config: ReinforceConfig
    module: torch.nn.Module
    training: dict  # figures, filled in by training
    seen_ids: list[str]  # every example id training or validation used

    def sample_batch(self, tasks: Sequence[Task], generator: torch.Generator) -> tuple[list, Any]:
        """One sampled design per task (each with `.graph` and `.log_prob`), and what regularizers read."""

    def design_batch(self, tasks: Sequence[Task]) -> list[CommGraph]:
        """The deterministic evaluation graph of each task."""

    def regularizers(self, probs: Any) -> dict[str, torch.Tensor]:
        """Extra loss terms, already weighted."""

    def advantages(self, utilities: torch.Tensor) -> torch.Tensor:
        """Utility minus a baseline."""

    def after_update(self, step: int) -> None: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict) -> None: ...


def rollouts(
    team: Team, examples: Sequence, graphs: Sequence[CommGraph] | None, metric: Metric, cost: str = "tokens"
) -> list[tuple[float, float, Any]]:
    """(score, cost, result) per example, all run in one batched pass; graphs None: the team's own; cost in the
    unit `cost` names (`kvmesh.training.reward.task_cost`)."""
    own = [team.graph] * len(examples)  # explicit: a team with a designer would otherwise run the designer's graphs
    results = team.run_batch([example_task(e) for e in examples], graphs=own if graphs is None else graphs)
    return [(float(metric(e, r)), task_cost(r.usage.total, cost), r) for e, r in zip(examples, results, strict=True)]


def summarize(scored, token_weight: float, normaliser: float) -> dict:
    """Mean score, cost, tokens, generated tokens, seconds of model calls, calls and utility of `rollouts` output."""
    n = max(len(scored), 1)
    score = sum(s for s, _, _ in scored) / n
    cost = sum(c for _, c, _ in scored) / n
    totals = [r.usage.total for _, _, r in scored]
    return {
        "score": score,
        "cost": cost,
        "tokens": sum(u.total_tokens for u in totals) / n,
        "generated": sum(u.output_tokens for u in totals) / n,
        "call_seconds": sum(u.call_time_s for u in totals) / n,
        "calls": sum(u.calls for u in totals) / n,
        "utility": utility(score, cost, token_weight, normaliser),
    }


def validate(policy: GraphPolicy, team: Team, valset: Sequence, metric: Metric, normaliser: float) -> dict:
    graphs = policy.design_batch([example_task(e) for e in valset])
    config = policy.config
    summary = summarize(rollouts(team, valset, graphs, metric, config.cost), config.token_weight, normaliser)
    summary["edges"] = sum(len(g.edges()) for g in graphs) / max(len(graphs), 1)
    summary["agents"] = sum(len(g.agents) for g in graphs) / max(len(graphs), 1)
    return summary


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of update `step`: consecutive slices of a seeded shuffle, reshuffled every epoch."""
    per_epoch = max(1, count // batch_size) if count >= batch_size else 1
    epoch, slot = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order[slot * batch_size : slot * batch_size + batch_size]


def save_atomic(state: dict, path: Path) -> None:
    """`torch.save` `state` to `path` atomically: a kill leaves the last complete checkpoint."""
    write_atomic(path, lambda handle: torch.save(state, handle))


def holds_updates(folder: Path) -> bool:
    """Whether a designer's training folder holds finished work: a checkpoint (at any depth) or a log line."""
    return any(folder.rglob(CHECKPOINT)) or holds_results(folder)


# designer settings added after runs were saved, with what those runs did
ADDED = {"cost": "tokens", "channels": []}


def with_added(saved: dict, current: dict) -> dict:
    """`saved` designer settings with each `ADDED` setting it lacks and `current` has, at what older runs did."""
    return {**{k: v for k, v in ADDED.items() if k in current and k not in saved}, **saved}


def older_designer(key: str, current: dict) -> Callable[[dict], dict]:
    """A `Comparison.upgrade` for a saved record whose `key` holds designer settings (`with_added`)."""
    return lambda saved: {**saved, key: with_added(saved.get(key) or {}, current)}


def design_run(out: Path, record: dict, resume: bool) -> AbstractContextManager[Opened]:
    """`kvmesh design train`'s folder around its training: config.json (`record`) checked or saved, and what a
    fresh start wrote removed when it fails before its first update (`kvmesh.runs.start_run`)."""
    rules = Comparison(upgrade=older_designer("designer", record.get("designer") or {}))
    opened = lambda: open_config(out, record, resume, Wording("designer run"), rules)  # noqa: E731
    return start_run(out, opened, holds_updates)


def _progress(total: int, done: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="update", dynamic_ncols=True)


def measure_normaliser(policy: GraphPolicy, team: Team, trainset: Sequence, metric: Metric) -> float:
    """Mean cost per task of the team's own graph on the first training batch: what costs λ."""
    config = policy.config
    if config.token_normalizer > 0:
        return config.token_normalizer
    first = [trainset[i] for i in batch_indices(len(trainset), config.batch_size, 0, config.seed)]
    scored = rollouts(team, first, None, metric, config.cost)
    return cost_scale([c for _, c, _ in scored], config.cost)


def check_cost_scale(config: ReinforceConfig, team: Team) -> None:
    """Refuse, before any run, a kv-bytes cost without `token_normalizer` on a team whose own graph carries no
    caches: its normaliser would be measured as zero."""
    if config.cost != "kv-bytes" or config.token_normalizer > 0:
        return
    if not any(team.channels[edge.channel].carries_caches for edge in team.graph.edges()):
        raise ConfigError(_no_scale("kv-bytes"))


def _no_scale(cost: str) -> str:
    return (
        f"the team's own graph spends no {COST_UNITS[cost]}, so it cannot set the scale of a {cost} cost: give "
        f"{{token_normalizer}} (the {COST_UNITS[cost]} per task that cost {{token_weight}}), or choose another {{cost}}"
    )


def cost_scale(costs: Sequence[float], cost: str) -> float:
    """The normaliser measured from the team's own graph's `costs`: their mean (tokens: at least one token). A
    graph that spent none of it (a text team moves no KV bytes) cannot set the scale, so that is refused."""
    mean = sum(costs) / max(len(costs), 1)
    if mean <= 0:
        raise ConfigError(_no_scale(cost))
    return max(1.0, mean) if cost in ("tokens", "generated") else mean


def open_checkpoint(out: Path | None, policy: GraphPolicy, resume: bool, ids: list[str]) -> dict | None:
    """The saved state of an earlier run in `out` (resume), or None; refuses to overwrite one silently, and to
    resume one with another designer, configuration (more `steps` included) or set of examples."""
    if out is None or not (out / CHECKPOINT).exists():
        return None
    state = torch.load(out / CHECKPOINT, weights_only=False)
    saved = {"designer": state["kind"], "configuration": with_added(state["config"], asdict(policy.config))}
    saved |= {"examples": state["ids"]} if "ids" in state else {}  # older checkpoints lack them: a change
    current = {"designer": policy.kind, "configuration": asdict(policy.config), "examples": ids}
    check_resume(out, saved, current, resume, DESIGNER_RUN)
    return state


def policy_loss(policy: GraphPolicy, samples, probs, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """REINFORCE: −mean(advantage · log p(G)), plus the policy's weighted regularisers (returned apart)."""
    advantages = policy.advantages(values)
    objective = -(advantages * torch.stack([s.log_prob for s in samples])).mean()
    terms = policy.regularizers(probs)
    return objective + sum(terms.values(), torch.zeros(())), terms


def reinforce(
    policy: GraphPolicy,
    team: Team,
    trainset: Sequence,
    valset: Sequence,
    metric: Metric,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    phase: str = "reinforce",
    start_best: dict | None = None,
) -> dict:
    """Train `policy` (bound to `team`) in place; returns (and stores in `policy.training`) its figures.

    `start_best`: the validation figures of the weights training starts from (with "weights" and "extra"),
    which an update must beat to be kept; AGP's fitted model, before tuning."""
    config = policy.config
    if not trainset:
        raise ValueError("the training set is empty")
    check_cost_scale(config, team)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(policy.module.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    ids = [example_id(e, i) for i, e in enumerate(trainset)] + [example_id(e, i) for i, e in enumerate(valset)]
    state = open_checkpoint(out, policy, resume, ids)
    if state is None:
        started = time.perf_counter()
        normaliser = policy.training.get("normaliser")
        if not normaliser:  # only utilities need it: no updates and no validation, no rollouts
            needed = config.steps > 0 or bool(valset)
            normaliser = measure_normaliser(policy, team, trainset, metric) if needed else 1.0
        state = {
            "kind": policy.kind,
            "config": asdict(policy.config),
            "ids": ids,
            "step": 0,
            "normaliser": normaliser,
            "history": [],
            "validation": [],
            "best": start_best,
            "seconds": time.perf_counter() - started,
        }
    else:
        policy.module.load_state_dict(state["weights"])
        policy.load_extra_state(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    normaliser = state["normaliser"]
    bar = _progress(config.steps, state["step"], f"{policy.kind} {phase}", progress)
    for step in range(state["step"], config.steps):
        began = time.perf_counter()
        batch = [trainset[i] for i in batch_indices(len(trainset), config.batch_size, step, config.seed)]
        samples, probs = policy.sample_batch([example_task(e) for e in batch], generator)
        scored = rollouts(team, batch, [s.graph for s in samples], metric, config.cost)
        values = utilities([(score, cost) for score, cost, _ in scored], config.token_weight, normaliser)
        loss, terms = policy_loss(policy, samples, probs, torch.tensor(values, dtype=torch.float32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        policy.after_update(step)
        record = {"step": step + 1, **summarize(scored, config.token_weight, normaliser), "loss": loss.item()}
        record |= {name: value.item() for name, value in terms.items()}
        state["history"].append(record)
        if ((step + 1) % config.eval_every == 0 or step + 1 == config.steps) and valset:
            check = {"step": step + 1, **validate(policy, team, valset, metric, normaliser)}
            state["validation"].append(check)
            if state["best"] is None or check["utility"] > state["best"]["utility"]:
                state["best"] = {**check, "weights": copy_weights(policy.module.state_dict())}
                state["best"]["extra"] = policy.extra_state()
        state["step"] = step + 1
        record["seconds"] = time.perf_counter() - began  # rollouts, update and any validation
        state["seconds"] += record["seconds"]
        if out is not None:
            state |= {
                "weights": policy.module.state_dict(),
                "extra": policy.extra_state(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
            }
            save_atomic(state, out / CHECKPOINT)
            write_json(out / "history.json", _figures(state))
        if bar:
            bar.set_postfix(
                util=f"{record['utility']:.3f}", score=f"{record['score']:.2f}", cost=f"{record['cost']:.4g}"
            )
            bar.update(1)
    if bar:
        bar.close()
    if config.steps == 0 and valset and not state["validation"]:  # nothing to train: report the start
        check = {"step": 0, **validate(policy, team, valset, metric, normaliser)}
        state["validation"].append(check)
        state["best"] = {
            **check,
            "weights": copy_weights(policy.module.state_dict()),
            "extra": policy.extra_state(),
        }
    if state["best"] is not None:
        policy.module.load_state_dict(state["best"]["weights"])
        policy.load_extra_state(state["best"]["extra"])
    policy.seen_ids = sorted(set(policy.seen_ids) | set(ids))
    figures = _figures(state)
    policy.training |= {"normaliser": normaliser, phase: figures}
    return figures


def copy_weights(weights: dict) -> dict:
    """A detached copy of a state dict (the best version so far, kept while training goes on)."""
    return {name: tensor.detach().clone() for name, tensor in weights.items()}


def _figures(state: dict) -> dict:
    """What a run reports: updates, seconds, history, validations and the chosen one (without weights)."""
    best = state["best"]
    chosen = {k: v for k, v in best.items() if k not in ("weights", "extra")} if best else None
    return {
        "updates": state["step"],
        "seconds": state["seconds"],
        "normaliser": state["normaliser"],
        "history": state["history"],
        "validation": state["validation"],
        "chosen": chosen,
    }
