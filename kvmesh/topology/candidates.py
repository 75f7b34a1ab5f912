"""Candidate edges of a team and the graphs a designer draws from them: sampled DAGs and thresholded graphs.

A designer scores every candidate edge (a probability each) and, for AGP, every agent (a keep probability).
Candidates are all ordered pairs of different agents for spatial edges, and, when the team runs more than
one round, all ordered pairs including self-loops for temporal edges.

Spatial edges must form a DAG. Sampling visits the spatial candidates in a random order and skips an edge
that would close a cycle, so every sample is a DAG; a skipped edge was never a choice and adds nothing to the
sample's log-probability. The evaluation graph is deterministic: candidates in order of falling probability,
kept when above the threshold and cycle-free (ties broken by the candidate order).

Shapes: N agents, E spatial candidates (N·(N−1)), T temporal candidates (N² or 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvmesh.graph.dag import dag_choices
from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL


@dataclass(frozen=True)
class Candidates:
    """The edges a designer may choose over `agents` (in the team's order), all on one `channel`."""

    agents: tuple[str, ...]
    spatial: tuple[tuple[int, int], ...]
    temporal: tuple[tuple[int, int], ...]
    channel: str = DEFAULT_CHANNEL

    @classmethod
    def build(cls, agents: Sequence[str], rounds: int = 1, channel: str = DEFAULT_CHANNEL) -> Candidates:
        n = len(agents)
        spatial = tuple((i, j) for i in range(n) for j in range(n) if i != j)
        temporal = tuple((i, j) for i in range(n) for j in range(n)) if rounds > 1 else ()
        return cls(tuple(agents), spatial, temporal, channel)

    def edges(self) -> list[Edge]:
        """Every candidate as an edge (spatial ones in both directions, so not a graph: they hold cycles)."""
        return [
            Edge(self.agents[i], self.agents[j], kind, self.channel)
            for kind, pairs in ((SPATIAL, self.spatial), (TEMPORAL, self.temporal))
            for i, j in pairs
        ]

    def graph(
        self,
        spatial: torch.Tensor,
        temporal: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        weights: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> CommGraph:
        """The graph of chosen edges. spatial: (E,) bool; temporal: (T,) bool; keep: (N,) bool, agents left
        out of the graph (with their edges); weights: per-candidate probabilities stored as `Edge.weight`."""
        kept = [bool(k) for k in keep] if keep is not None else [True] * len(self.agents)
        edges = []
        for kind, pairs, chosen, weight in (
            (SPATIAL, self.spatial, spatial, weights[0] if weights else None),
            (TEMPORAL, self.temporal, temporal, weights[1] if weights else None),
        ):
            if chosen is None:
                continue
            for e, (i, j) in enumerate(pairs):
                if chosen[e] and kept[i] and kept[j]:
                    w = round(float(weight[e]), 4) if weight is not None else None
                    edges.append(Edge(self.agents[i], self.agents[j], kind, self.channel, w))
        return CommGraph([a for a, k in zip(self.agents, kept, strict=True) if k], edges)


def bernoulli_log_prob(probs: torch.Tensor, chosen: torch.Tensor, considered: torch.Tensor) -> torch.Tensor:
    """Sum of log p (chosen) or log (1 − p) (not chosen) over the considered entries; differentiable in probs."""
    probs = probs.clamp(1e-6, 1 - 1e-6)
    terms = torch.where(chosen, probs.log(), (1 - probs).log())
    return (terms * considered.to(probs.dtype)).sum()


@dataclass
class Sampled:
    """One sampled design: the graph, what was chosen, and its log-probability (a scalar with a graph)."""

    graph: CommGraph
    log_prob: torch.Tensor
    spatial: torch.Tensor  # (E,) bool
    temporal: torch.Tensor  # (T,) bool
    keep: torch.Tensor | None = None  # (N,) bool


def sample_design(
    candidates: Candidates,
    spatial_probs: torch.Tensor,
    temporal_probs: torch.Tensor,
    generator: torch.Generator,
    keep_probs: torch.Tensor | None = None,
) -> Sampled:
    """Draw agents to keep (when `keep_probs` is given; at least one), then a DAG of spatial edges among them,
    then temporal edges. Probabilities: (E,), (T,) and (N,); the log-probability covers every choice made."""
    log_prob = spatial_probs.new_zeros(())
    keep = None
    if keep_probs is not None:
        keep = torch.rand(keep_probs.shape, generator=generator) < keep_probs.detach()
        log_prob = log_prob + bernoulli_log_prob(keep_probs, keep, torch.ones_like(keep))  # the draws as made
        if not keep.any():  # every draw said drop; a graph needs an agent, so the likeliest runs anyway
            keep = keep.clone()  # the log-probability above keeps the draws as they were
            keep[int(keep_probs.argmax())] = True
    kept = keep.tolist() if keep is not None else [True] * len(candidates.agents)
    allowed = [kept[i] and kept[j] for i, j in candidates.spatial]
    order = torch.randperm(len(candidates.spatial), generator=generator).tolist()
    draws = torch.rand(len(candidates.spatial), generator=generator)
    p = spatial_probs.detach()
    chosen, considered = dag_choices(candidates.spatial, order, lambda e: bool(draws[e] < p[e]), allowed)
    spatial = torch.tensor(chosen, dtype=torch.bool)
    log_prob = log_prob + bernoulli_log_prob(spatial_probs, spatial, torch.tensor(considered, dtype=torch.bool))
    temporal = torch.rand(temporal_probs.shape, generator=generator) < temporal_probs.detach()
    temporal_allowed = torch.tensor([kept[i] and kept[j] for i, j in candidates.temporal], dtype=torch.bool)
    log_prob = log_prob + bernoulli_log_prob(temporal_probs, temporal, temporal_allowed)
    graph = candidates.graph(spatial, temporal & temporal_allowed, keep)
    return Sampled(graph, log_prob, spatial, temporal & temporal_allowed, keep)


def threshold_design(
    candidates: Candidates,
    spatial_probs: torch.Tensor,
    temporal_probs: torch.Tensor,
    threshold: float = 0.5,
    keep_probs: torch.Tensor | None = None,
) -> CommGraph:
    """The deterministic evaluation graph: agents with keep probability above `threshold` (the likeliest if
    none), spatial edges above it in order of falling probability while acyclic, temporal edges above it."""
    keep = None
    if keep_probs is not None:
        keep = keep_probs > threshold
        if not keep.any():
            keep[int(keep_probs.argmax())] = True
    kept = keep.tolist() if keep is not None else [True] * len(candidates.agents)
    allowed = [kept[i] and kept[j] for i, j in candidates.spatial]
    p = spatial_probs.detach().tolist()
    order = sorted(range(len(p)), key=lambda e: -p[e])  # stable: ties keep the candidate order
    chosen, _ = dag_choices(candidates.spatial, order, lambda e: p[e] > threshold, allowed)
    temporal = temporal_probs.detach() > threshold
    weights = (spatial_probs.detach(), temporal_probs.detach())
    return candidates.graph(torch.tensor(chosen, dtype=torch.bool), temporal, keep, weights)
