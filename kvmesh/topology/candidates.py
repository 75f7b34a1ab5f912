"""Candidate edges of a team and the graphs a designer draws from them: sampled DAGs and thresholded graphs.

A designer scores every candidate edge (a probability each) and, for AGP, every agent (a keep probability).
Candidates are all ordered pairs of different agents for spatial edges, and, when the team runs more than
one round, all ordered pairs including self-loops for temporal edges.

With several channels to choose from (`channels`), every kept edge also draws its channel from a categorical of
its own (C choices). An agent reads caches over one channel at most (`Team` refuses more), so once an edge into
an agent carries a cache channel, the agent's later edges may choose only that channel or one without caches: the
excluded choices are masked out and the rest renormalised, so the log-probability is that of the choice as made.
The evaluation graph gives each kept edge its likeliest allowed channel, edges in order of falling probability.

Spatial edges must form a DAG. Sampling visits the spatial candidates in a random order and skips an edge
that would close a cycle, so every sample is a DAG; a skipped edge was never a choice and adds nothing to the
sample's log-probability. The evaluation graph is deterministic: candidates in order of falling probability,
kept when above the threshold and cycle-free (ties broken by the candidate order).

Shapes: N agents, E spatial candidates (N·(N−1)), T temporal candidates (N² or 0), C channels; channel
probabilities (E, C) and (T, C).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvmesh.graph.dag import dag_choices
from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, carries_caches


@dataclass(frozen=True)
class Candidates:
    """The edges a designer may choose over `agents` (in the team's order), and the `channels` each may carry
    (the first is the one an edge gets when there is no choice); `caches[c]`: channel c brings caches."""

    agents: tuple[str, ...]
    spatial: tuple[tuple[int, int], ...]
    temporal: tuple[tuple[int, int], ...]
    channels: tuple[str, ...] = (DEFAULT_CHANNEL,)
    caches: tuple[bool, ...] = (False,)

    @classmethod
    def build(cls, agents: Sequence[str], rounds: int = 1, channels: Sequence[str] = (DEFAULT_CHANNEL,)) -> Candidates:
        n = len(agents)
        spatial = tuple((i, j) for i in range(n) for j in range(n) if i != j)
        temporal = tuple((i, j) for i in range(n) for j in range(n)) if rounds > 1 else ()
        return cls(tuple(agents), spatial, temporal, tuple(channels), tuple(carries_caches(c) for c in channels))

    @property
    def choosing(self) -> bool:
        """Whether edges choose their channel (more than one to choose from)."""
        return len(self.channels) > 1

    def edges(self) -> list[Edge]:
        """Every candidate as an edge on the first channel (spatial ones in both directions, so not a graph:
        they hold cycles)."""
        return [
            Edge(self.agents[i], self.agents[j], kind, self.channels[0])
            for kind, pairs in ((SPATIAL, self.spatial), (TEMPORAL, self.temporal))
            for i, j in pairs
        ]

    def graph(
        self,
        spatial: torch.Tensor,
        temporal: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        weights: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        channels: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> CommGraph:
        """The graph of chosen edges. spatial: (E,) bool; temporal: (T,) bool; keep: (N,) bool, agents left
        out of the graph (with their edges); weights: per-candidate probabilities stored as `Edge.weight`;
        channels: (E,) and (T,) indices into `self.channels` (None: the first)."""
        kept = [bool(k) for k in keep] if keep is not None else [True] * len(self.agents)
        edges = []
        for kind, pairs, chosen, weight, choice in (
            (SPATIAL, self.spatial, spatial, weights[0] if weights else None, channels[0] if channels else None),
            (TEMPORAL, self.temporal, temporal, weights[1] if weights else None, channels[1] if channels else None),
        ):
            if chosen is None:
                continue
            for e, (i, j) in enumerate(pairs):
                if chosen[e] and kept[i] and kept[j]:
                    w = round(float(weight[e]), 4) if weight is not None else None
                    channel = self.channels[int(choice[e])] if choice is not None else self.channels[0]
                    edges.append(Edge(self.agents[i], self.agents[j], kind, channel, w))
        return CommGraph([a for a, k in zip(self.agents, kept, strict=True) if k], edges)

    def allowed_channels(self, readers: dict[int, int], target: int) -> torch.Tensor:
        """(C,) bool: the channels an edge into agent `target` may take, given the cache channel each agent
        already reads over (`readers`: agent -> channel index)."""
        reading = readers.get(target)
        return torch.tensor([not cache or reading in (None, c) for c, cache in enumerate(self.caches)])


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
    channels: tuple[torch.Tensor, torch.Tensor] | None = None  # (E,) and (T,) channel indices, when choosing


ChannelProbs = tuple[torch.Tensor, torch.Tensor]  # (E, C) and (T, C): each candidate's channel probabilities


def choose_channels(
    candidates: Candidates,
    probs: ChannelProbs,
    edges: Sequence[tuple[int, int]],
    pick: Callable[[torch.Tensor], int],
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A channel for each kept edge, `edges` = (kind, candidate) in the order they are decided (kind 0: spatial,
    1: temporal): `pick` chooses from the allowed channels' renormalised probabilities (see the module docstring).
    Returns the (E,) and (T,) channel indices and the log-probability of the choices (differentiable)."""
    chosen = (
        torch.zeros(len(candidates.spatial), dtype=torch.long),
        torch.zeros(len(candidates.temporal), dtype=torch.long),
    )
    log_prob = probs[0].new_zeros(())
    readers: dict[int, int] = {}
    for kind, e in edges:
        target = (candidates.spatial, candidates.temporal)[kind][e][1]
        allowed = candidates.allowed_channels(readers, target).to(probs[kind].dtype)
        masked = probs[kind][e] * allowed
        total = masked.sum()
        # probabilities that underflowed on every allowed channel: draw among them evenly
        masked = masked / total if float(total) > 0 else allowed / allowed.sum()
        c = pick(masked.detach())
        log_prob = log_prob + masked[c].clamp_min(1e-12).log()
        if candidates.caches[c]:
            readers[target] = c
        chosen[kind][e] = c
    return chosen, log_prob


def sample_design(
    candidates: Candidates,
    spatial_probs: torch.Tensor,
    temporal_probs: torch.Tensor,
    generator: torch.Generator,
    keep_probs: torch.Tensor | None = None,
    channel_probs: ChannelProbs | None = None,
) -> Sampled:
    """Draw agents to keep (when `keep_probs` is given; at least one), then a DAG of spatial edges among them,
    then temporal edges, then (with `channel_probs`) each kept edge's channel. Probabilities: (E,), (T,), (N,),
    and (E, C), (T, C); the log-probability covers every choice made."""
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
    temporal = temporal & temporal_allowed
    channels = None
    if channel_probs is not None:
        kept_edges = [(0, e) for e in order if chosen[e]] + [(1, t) for t in range(len(temporal)) if temporal[t]]
        draw = lambda p: int(torch.multinomial(p, 1, generator=generator))  # noqa: E731
        channels, channel_log_prob = choose_channels(candidates, channel_probs, kept_edges, draw)
        log_prob = log_prob + channel_log_prob
    graph = candidates.graph(spatial, temporal, keep, channels=channels)
    return Sampled(graph, log_prob, spatial, temporal, keep, channels)


def threshold_design(
    candidates: Candidates,
    spatial_probs: torch.Tensor,
    temporal_probs: torch.Tensor,
    threshold: float = 0.5,
    keep_probs: torch.Tensor | None = None,
    channel_probs: ChannelProbs | None = None,
) -> CommGraph:
    """The deterministic evaluation graph: agents with keep probability above `threshold` (the likeliest if
    none), spatial edges above it in order of falling probability while acyclic, temporal edges above it, each
    on its likeliest allowed channel (with `channel_probs`)."""
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
    temporal &= torch.tensor([kept[i] and kept[j] for i, j in candidates.temporal], dtype=torch.bool)
    weights = (spatial_probs.detach(), temporal_probs.detach())
    channels = None
    if channel_probs is not None:
        tp = temporal_probs.detach().tolist()
        kept_edges = [(0, e) for e in order if chosen[e]]
        kept_edges += [(1, t) for t in sorted(range(len(tp)), key=lambda t: -tp[t]) if temporal[t]]
        channels, _ = choose_channels(candidates, channel_probs, kept_edges, lambda p: int(p.argmax()))
    return candidates.graph(torch.tensor(chosen, dtype=torch.bool), temporal, keep, weights, channels)
