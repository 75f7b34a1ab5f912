"""`edge-logits`: one logit per candidate edge, as in GPTSwarm and AgentPrune; one graph for every task.

Every candidate spatial and temporal edge has a logit (probability 0.5 at the start). Training is REINFORCE
with a moving-average baseline; every `prune_every` updates the lowest `pruning_rate` of the remaining edges
(by logit) are pruned for good, AgentPrune's magnitude pruning. The evaluation graph is fixed: the remaining
edges above the threshold, spatial ones added in order of falling probability while they stay acyclic, so
`compile` returns a team whose graph is that graph (no per-task work at run time).

With channels to choose among (`channels`), each candidate edge also has a logit vector over them (uniform at
the start), trained by the same REINFORCE signal.

Caveat: an agent is never removed, only its edges; every agent still runs and feeds the decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.topology.designer import Designer, DesignerConfig, Probabilities


@dataclass
class EdgeLogitsConfig(DesignerConfig):
    """Settings of the edge-logits designer (AgentPrune).

    Args:
        lr: Adam learning rate on the edge logits (GPTSwarm uses 0.1).
        baseline_momentum: weight of the old value in the moving-average utility baseline.
        pruning_rate: share of the remaining edges pruned at each pruning.
        prune_every: updates between prunings (0: never prune).
    """

    lr: float = 0.1
    baseline_momentum: float = 0.9
    pruning_rate: float = 0.25
    prune_every: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.pruning_rate < 1.0 or not 0.0 <= self.baseline_momentum < 1.0:
            raise ConfigError("{pruning_rate} and {baseline_momentum} must be in [0, 1)")
        if self.prune_every < 0:
            raise ConfigError(f"{{prune_every}} must be >= 0, got {self.prune_every}")


class EdgeLogits(nn.Module):
    """Logits and keep masks: spatial (E,), temporal (T,); with C > 1 channels, channel logits (E, C), (T, C)."""

    def __init__(self, spatial: int, temporal: int, channels: int = 1) -> None:
        super().__init__()
        self.spatial = nn.Parameter(torch.zeros(spatial))
        self.temporal = nn.Parameter(torch.zeros(temporal))
        self.channels = channels
        if channels > 1:
            self.spatial_channel = nn.Parameter(torch.zeros(spatial, channels))
            self.temporal_channel = nn.Parameter(torch.zeros(temporal, channels))
        self.register_buffer("spatial_mask", torch.ones(spatial, dtype=torch.bool))
        self.register_buffer("temporal_mask", torch.ones(temporal, dtype=torch.bool))

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = torch.sigmoid(self.spatial) * self.spatial_mask
        temporal = torch.sigmoid(self.temporal) * self.temporal_mask
        return spatial, temporal

    @torch.no_grad()
    def prune(self, rate: float) -> int:
        """Mask the lowest `rate` of the remaining edges (spatial and temporal pooled); returns how many."""
        logits = torch.cat([self.spatial, self.temporal])
        masks = torch.cat([self.spatial_mask, self.temporal_mask])
        remaining = masks.nonzero().squeeze(-1)
        count = math.floor(rate * len(remaining))
        if count == 0:
            return 0
        lowest = remaining[logits[remaining].argsort()[:count]]
        masks[lowest] = False
        self.spatial_mask.copy_(masks[: len(self.spatial)])
        self.temporal_mask.copy_(masks[len(self.spatial) :])
        return count


class EdgeLogitsDesigner(Designer):
    kind = "edge-logits"
    config_class = EdgeLogitsConfig
    per_task = False

    def __init__(self, config: EdgeLogitsConfig | None = None, metric=None) -> None:
        super().__init__(config, metric)
        self.baseline: float | None = None

    def _build(self, team: Team) -> None:
        candidates = self.candidates
        self.module = EdgeLogits(len(candidates.spatial), len(candidates.temporal), len(candidates.channels))

    def probabilities(self, tasks: Sequence[Task], noise: torch.Generator | None = None) -> Probabilities:
        spatial, temporal = self.module.probabilities()
        batch = len(tasks)
        channels = None
        if self.module.channels > 1:
            per_edge = (self.module.spatial_channel, self.module.temporal_channel)
            channels = tuple(logits.softmax(-1).expand(batch, -1, -1) for logits in per_edge)
        return Probabilities(spatial.expand(batch, -1), temporal.expand(batch, -1), channels=channels)

    def advantages(self, utilities: torch.Tensor) -> torch.Tensor:
        """Against a moving average of past batches' mean utility (the first batch is its own baseline)."""
        mean = float(utilities.mean())
        baseline = mean if self.baseline is None else self.baseline
        momentum = self.config.baseline_momentum
        self.baseline = mean if self.baseline is None else momentum * self.baseline + (1 - momentum) * mean
        return utilities - baseline

    def after_update(self, step: int) -> None:
        every = self.config.prune_every
        if every and (step + 1) % every == 0:
            self.module.prune(self.config.pruning_rate)

    def extra_state(self) -> dict:
        return {"baseline": self.baseline}

    def load_extra_state(self, state: dict) -> None:
        self.baseline = state.get("baseline")
