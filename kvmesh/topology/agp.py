"""`agp`: Adaptive Graph Pruning: G-Designer's network plus a per-agent keep head; pruned agents do not run.

Training follows AGP's two stages, then optionally REINFORCE:

    I   mine    for every training task, run the team's own graph, each agent alone, and `mining_samples`
                random graphs (agents kept with probability `mining_keep`, edges with 0.5, spatial ones as
                DAGs); keep the one with the best utility among those that solved it (score > 0)
    II  fit     supervised, on the solved tasks: BCE of keep probabilities against the mined graph's
                agents, BCE of edge probabilities against its edges (pairs with both ends kept), a
                consistency term (spatial edge probability on pairs with a pruned end), plus G-Designer's
                sparsity, KL and anchor terms
    III tune    `steps` REINFORCE updates through `kvmesh.training.reinforce` (0 by default)

At evaluation an agent whose keep probability is below the threshold is left out of the task's graph, so it
has no turn at all: no model call, no tokens, nothing for the decision maker to read (AGP's released code
still runs such agents). Mining and validation use the training and validation sets only.

Caveat: in stage I a task's utility uses the team's own graph on that task as the cost normaliser, so "half
the cost of the full team" means the same on short and long tasks. Costs are in `cost`'s unit (tokens by
default; `kvmesh.training.reward`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.evals.store import open_run, read_samples
from kvmesh.graph.graph import CommGraph
from kvmesh.topology.candidates import sample_design
from kvmesh.topology.gdesigner import GDesigner, GDesignerConfig
from kvmesh.training.examples import example_id, example_task
from kvmesh.training.reinforce import (
    Metric,
    check_cost_scale,
    copy_weights,
    cost_scale,
    older_designer,
    reinforce,
    rollouts,
    validate,
)
from kvmesh.training.reward import utilities


@dataclass
class AGPConfig(GDesignerConfig):
    """Settings of AGP (G-Designer's network with agent pruning).

    Args:
        steps: REINFORCE updates after the supervised fit (0: AGP's own recipe, mine then fit).
        mining_samples: random graphs run per training task in stage I, besides the team's own graph.
        mining_keep: probability of keeping each agent in a mined graph.
        mining_singles: also run each agent alone (with the decision maker): the cheapest graphs, and the
            plainest evidence of which agent a task needs.
        fit_epochs: full-batch epochs of the stage II fit.
        fit_lr: Adam learning rate of the fit.
        keep_weight: weight of the keep BCE in the fit.
        edge_weight: weight of the edge BCE in the fit.
        consistency_weight: weight of edge probability on pairs with a pruned agent.
        fit_holdout: share of the solved training tasks held out of the fit to choose its epoch.
        sparsity_weight: weight of the mean edge probability in the fit (and in tuning).
        kl_weight: weight of the KL term.
        anchor_weight: weight of the BCE toward the team's graph.
        anchor_logit: initial logit bias toward the team's graph (0: none; the mined graphs decide).
    """

    # The fit is supervised: a steady regulariser does not drown a noisy signal there as it does in
    # REINFORCE, so AGP keeps heavier weights than G-Designer's and no initial anchor bias.
    sparsity_weight: float = 0.1
    kl_weight: float = 0.01
    anchor_weight: float = 0.05
    anchor_logit: float = 0.0
    steps: int = 0
    mining_samples: int = 2
    mining_keep: float = 0.5
    mining_singles: bool = True
    fit_epochs: int = 300
    fit_lr: float = 0.005
    keep_weight: float = 1.0
    edge_weight: float = 1.0
    consistency_weight: float = 0.1
    fit_holdout: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mining_samples < 1 or not 0.0 < self.mining_keep <= 1.0 or self.fit_epochs < 0:
            raise ConfigError("need {mining_samples} >= 1, 0 < {mining_keep} <= 1 and {fit_epochs} >= 0")
        if not 0.0 <= self.fit_holdout < 1.0:
            raise ConfigError(f"{{fit_holdout}} must be in [0, 1), got {self.fit_holdout}")


class AGP(GDesigner):
    kind = "agp"
    config_class = AGPConfig
    prunes_agents = True

    # --- stage I ---------------------------------------------------------------------------------------------

    def mining_graphs(self, example, index: int) -> list[CommGraph]:
        """The team's own graph, each agent alone (`mining_singles`) and `mining_samples` random graphs for one
        example (seeded by its id), all distinct."""
        config: AGPConfig = self.config
        candidates = self.candidates
        seed = zlib.crc32(f"{config.seed}-{example_id(example, index)}".encode())
        generator = torch.Generator().manual_seed(seed)
        spatial = torch.full((len(candidates.spatial),), 0.5)
        temporal = torch.full((len(candidates.temporal),), 0.5)
        keep = torch.full((len(candidates.agents),), config.mining_keep)
        graphs = [self.team.graph]
        if config.mining_singles:
            graphs += [CommGraph([name]) for name in candidates.agents if CommGraph([name]) != self.team.graph]
        for _ in range(config.mining_samples):
            graph = sample_design(candidates, spatial, temporal, generator, keep, self._uniform_channels()).graph
            if graph not in graphs:
                graphs.append(graph)
        return graphs

    def mine(self, team: Team, trainset: Sequence, metric: Metric, out: Path | None, resume: bool, progress: bool):
        """Stage I: one line per training example {id, graphs, scores, costs, best}; durable under `out`."""
        config: AGPConfig = self.config
        ids = [example_id(e, i) for i, e in enumerate(trainset)]
        lines: dict[str, dict] = {}
        store = None
        if out is not None:
            record = {"designer": asdict(config), "train_ids": ids}
            store = open_run(out / "mining", record, resume, upgrade=older_designer("designer", record["designer"]))
            lines = {row["id"]: row for row in read_samples(out / "mining")}
        pending = [i for i, task_id in enumerate(ids) if task_id not in lines]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), initial=len(ids) - len(pending), desc="agp mining", unit="task")
        try:
            for start in range(0, len(pending), config.batch_size):
                chunk = pending[start : start + config.batch_size]
                runs = [(i, g) for i in chunk for g in self.mining_graphs(trainset[i], i)]
                scored = rollouts(team, [trainset[i] for i, _ in runs], [g for _, g in runs], metric, config.cost)
                for i in chunk:
                    rows = [(g, s, t) for (j, g), (s, t, _) in zip(runs, scored, strict=True) if j == i]
                    line = _mined_line(ids[i], rows, config.token_weight, config.token_normalizer)
                    lines[ids[i]] = line
                    if store is not None:
                        store.add(line)
                    if bar:
                        bar.update(1)
        finally:
            if store is not None:
                store.close()
            if bar:
                bar.close()
        return [lines[task_id] for task_id in ids]

    # --- stage II --------------------------------------------------------------------------------------------

    def _uniform_channels(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every channel equally likely on every candidate (mining draws them so), or None without a choice."""
        candidates = self.candidates
        if not candidates.choosing:
            return None
        share = 1 / len(candidates.channels)
        return tuple(
            torch.full((len(pairs), len(candidates.channels)), share)
            for pairs in (candidates.spatial, candidates.temporal)
        )

    def fit_targets(self, mined: Sequence[dict]) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        """(example indices, keep (M, N), spatial (M, E), temporal (M, T), channels) of the solved examples;
        channels: the (M, E) and (M, T) channel index of each mined edge (-1: no edge, or none to choose)."""
        names, candidates = self.candidates.agents, self.candidates
        index = {name: c for c, name in enumerate(candidates.channels)}
        rows, keeps, spatials, temporals, chosen = [], [], [], [], ([], [])
        for number, line in enumerate(mined):
            if line["best"] is None:
                continue
            graph = CommGraph.from_dict(line["graphs"][line["best"]])
            rows.append(number)
            keeps.append([float(a in graph.agents) for a in names])
            for kind, pairs, targets, channels in (
                ("spatial", candidates.spatial, spatials, chosen[0]),
                ("temporal", candidates.temporal, temporals, chosen[1]),
            ):
                on = {(e.source, e.target): e.channel for e in graph.edges(kind)}
                targets.append([float((names[i], names[j]) in on) for i, j in pairs])
                channels.append([index.get(on.get((names[i], names[j])), -1) for i, j in pairs])
        n, e, t = len(names), len(candidates.spatial), len(candidates.temporal)
        shape = lambda data, width: torch.tensor(data, dtype=torch.float32).reshape(len(rows), width)  # noqa: E731
        picks = lambda data, width: torch.tensor(data, dtype=torch.long).reshape(len(rows), width)  # noqa: E731
        return (
            rows,
            shape(keeps, n),
            shape(spatials, e),
            shape(temporals, t),
            (picks(chosen[0], e), picks(chosen[1], t)),
        )

    def fit_loss(self, probs, keep, spatial, temporal, channels=None) -> dict[str, torch.Tensor]:
        """Stage II terms for M examples: keep (M, N), spatial (M, E), temporal (M, T) targets (0/1), and with a
        channel choice the (M, E), (M, T) channel targets (-1: none)."""
        config: AGPConfig = self.config
        both = _both_kept(keep, self.module.spatial_pairs)  # (M, E): edges whose two ends the mined graph kept
        edges = _masked_bce(probs.spatial, spatial, both)
        if temporal.shape[1]:
            edges = edges + _masked_bce(probs.temporal, temporal, _both_kept(keep, self.module.temporal_pairs))
        terms = {
            "keep": config.keep_weight * torch.nn.functional.binary_cross_entropy(_clamp(probs.keep), keep),
            "edges": config.edge_weight * edges,
            "consistency": config.consistency_weight * (probs.spatial * (1 - both)).mean(),
        }
        if probs.channels is not None and channels is not None:
            terms["channels"] = config.edge_weight * _channel_nll(probs.channels, channels)
        return terms | self.regularizers(probs)

    def fit(self, trainset: Sequence, mined: Sequence[dict]) -> dict:
        """Stage II: full-batch supervised epochs on the solved examples, stopped early: a seeded
        `fit_holdout` share of them is held out and the epoch with the lowest held-out loss is kept (a few
        hundred tasks are otherwise easy to memorise). Returns the loss terms at that epoch."""
        config: AGPConfig = self.config
        rows, keep, spatial, temporal, channels = self.fit_targets(mined)
        if not rows:
            raise ValueError(
                "no mined graph solved any training task: use more tasks, more mining_samples, or a model strong "
                "enough to solve some of this benchmark"
            )
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(rows), generator=generator)
        held = order[: int(config.fit_holdout * len(rows))]
        fitted = order[len(held) :]
        features = self.features([example_task(trainset[i]) for i in rows])
        optimizer = torch.optim.Adam(self.module.parameters(), lr=config.fit_lr)
        best = (float("inf"), 0, copy_weights(self.module.state_dict()), {})
        for epoch in range(config.fit_epochs):
            self.module.train()
            output = self.module(features[fitted], generator)
            chosen = tuple(c[fitted] for c in channels)
            terms = self.fit_loss(self.from_output(output), keep[fitted], spatial[fitted], temporal[fitted], chosen)
            optimizer.zero_grad()
            sum(terms.values(), torch.zeros(())).backward()
            optimizer.step()
            if len(held):
                with torch.no_grad():
                    self.module.eval()
                    probs = self.from_output(self.module(features[held]))
                    chosen = tuple(c[held] for c in channels)
                    checked = self.fit_loss(probs, keep[held], spatial[held], temporal[held], chosen)
                    loss = float(sum(checked.values()))
            else:
                checked, loss = terms, sum(terms.values()).item()
            if loss < best[0]:
                best = (
                    loss,
                    epoch + 1,
                    copy_weights(self.module.state_dict()),
                    {k: v.item() for k, v in checked.items()},
                )
        self.module.load_state_dict(best[2])
        return {"solved": len(rows), "examples": len(mined), "held_out": len(held), "epoch": best[1], **best[3]}

    # --- the whole recipe ------------------------------------------------------------------------------------

    def compile(self, team, trainset, valset=(), metric=None, out=None, resume=False, progress=True) -> Team:
        metric = self._metric(metric)
        self.bind(team)
        designed, team = team, self.rollout_team(team)
        check_cost_scale(self.config, designed)  # before mining: a refusal after it would cost hours
        out = Path(out) if out is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        mined = self.mine(team, trainset, metric, out, resume, progress)
        mined_at = time.perf_counter()
        fitted = self.fit(trainset, mined)
        fitted_at = time.perf_counter()
        # mined lines saved before costs had units held tokens
        own_costs = [line["costs" if "costs" in line else "tokens"][0] for line in mined]
        normaliser = self.config.token_normalizer or cost_scale(own_costs, self.config.cost)
        self.training |= {
            "normaliser": normaliser,
            "mining": {"seconds": mined_at - began, "solved": fitted["solved"], "tasks": len(mined)},
            "fit": {"seconds": fitted_at - mined_at, **fitted},
        }
        ids = [example_id(e, i) for i, e in enumerate(trainset)] + [example_id(e, i) for i, e in enumerate(valset)]
        self.seen_ids = sorted(set(self.seen_ids) | set(ids))
        if valset:
            checked = time.perf_counter()
            self.training["validation"] = validate(self, team, valset, metric, normaliser)
            self.training["validation"]["seconds"] = time.perf_counter() - checked
        if self.config.steps:  # tuning keeps an update only if it validates better than the fit
            fitted = self.training.get("validation")
            start = fitted and {"step": 0, **fitted, "weights": copy_weights(self.module.state_dict()), "extra": {}}
            tune = out / "tune" if out else None
            reinforce(self, team, trainset, valset, metric, tune, resume, progress, "tune", start)
        return self.apply(designed)


def _clamp(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp(1e-6, 1 - 1e-6)


def _both_kept(keep: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return keep[:, pairs[:, 0]] * keep[:, pairs[:, 1]]


def _channel_nll(probs: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-probability of the mined channel of every mined edge (targets -1 left out; 0 if none)."""
    logs = torch.cat([p.clamp_min(1e-9).log().reshape(-1, p.shape[-1]) for p in probs])
    picks = torch.cat([t.reshape(-1) for t in targets])
    if not bool((picks >= 0).any()):
        return logs.new_zeros(())
    return torch.nn.functional.nll_loss(logs, picks, ignore_index=-1)


def _masked_bce(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the entries where `mask` is 1 (0 when there are none)."""
    losses = torch.nn.functional.binary_cross_entropy(_clamp(probs), target, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


def _mined_line(task_id: str, rows, token_weight: float, normaliser: float) -> dict:
    """The mined record of one task: every graph run, and the best one that solved it (None if none did)."""
    own_cost = rows[0][2]  # the team's own graph comes first
    scale = normaliser or (own_cost if own_cost > 0 else 1.0)  # a graph that spent nothing: costs count as they are
    values = utilities([(score, cost) for _, score, cost in rows], token_weight, scale)
    solved = [k for k, (_, score, _) in enumerate(rows) if score > 0]
    best = max(solved, key=lambda k: values[k]) if solved else None
    return {
        "id": task_id,
        "graphs": [graph.to_dict() for graph, _, _ in rows],
        "scores": [score for _, score, _ in rows],
        "costs": [cost for _, _, cost in rows],
        "best": best,
    }
