"""The network behind G-Designer and AGP: a variational graph encoder over agents and a task virtual node.

    h   = ReLU(W_in x)                                   x: node features (kvmesh.topology.features)
    h   = h + ReLU(GCN_1(h, A))                          A: the anchor topology, undirected, plus the task
    h   = h + ReLU(GCN_2(h, A))                             node joined to every agent (a real virtual node)
    μ, log σ² = MLP_μ(h), MLP_σ(h);  z = μ + σ·ε (training, ε from a given generator) or μ (evaluation)
    spatial logit(i → j)  = ⟨S z_i, T z_j⟩ / √d + b_ij    one bias per candidate edge
    temporal logit(i → j) = ⟨S' z_i, T' z_j⟩ / √d + b'_ij
    keep logit(i)         = MLP_keep([z_i, z_task, z_i ⊙ z_task, r_i, r_i − mean_j r_j])   (AGP only)
    channel logits(i → j) = W_c [z_i, z_j] + c_ij          C channels, a bias vector per candidate (when edges
                                                          choose their channel; temporal edges their own head)

where r_i are agent i's scalar input features (relevance to the task and the like, the last `scalars` of x):
the keep head reads them directly, and against the team's mean, because whether an agent is needed is a
comparison within the task, and 3·D embedding dimensions are otherwise enough to memorise a few hundred
training tasks instead of learning it. Those scalars are standardised by a BatchNorm (batch statistics while
training, running statistics at evaluation, so an evaluation graph never depends on the other tasks of its
batch).

Logits go straight into a sigmoid: nothing rescales them, so a probability can reach 0 or 1 and the graph
can become sparse (G-Designer's released code min-max normalises logits to [−1, 1] first, which pins every
probability inside 0.27–0.73). The skip connections keep the input's relevance features within reach of
the heads.

Shapes: B tasks, N agents, F features, Z latent size; x (B, N + 1, F) -> μ, log σ² (B, N + 1, Z); spatial
logits (B, E); temporal logits (B, T); keep logits (B, N); channel logits (B, E, C) and (B, T, C).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DesignerOutput:
    spatial: torch.Tensor  # (B, E) logits
    temporal: torch.Tensor  # (B, T) logits
    keep: torch.Tensor | None  # (B, N) logits, AGP only
    mu: torch.Tensor  # (B, N + 1, Z)
    logvar: torch.Tensor  # (B, N + 1, Z)
    channels: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, E, C), (B, T, C) logits, when choosing

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)), averaged over nodes and summed over latent dimensions."""
        return (-0.5 * (1 + self.logvar - self.mu.pow(2) - self.logvar.exp()).sum(-1)).mean()


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class DesignerNet(nn.Module):
    """Encoder, edge decoder and (with `keep_head`) AGP's agent keep head.

    Args:
        features: F, the node feature width.
        agents: N.
        spatial: the E spatial candidate pairs (i, j).
        temporal: the T temporal candidate pairs.
        anchor: pairs of the anchor topology; message passing runs over them (both ways) and the task node.
        hidden, latent: widths.
        keep_head: add AGP's per-agent keep logits.
        scalars: how many trailing features of x the keep head also reads directly.
        channels: C, the channels an edge chooses among (1: no choice, no channel heads).
    """

    def __init__(
        self,
        features: int,
        agents: int,
        spatial: Sequence[tuple[int, int]],
        temporal: Sequence[tuple[int, int]],
        anchor: Sequence[tuple[int, int]],
        hidden: int = 64,
        latent: int = 32,
        keep_head: bool = False,
        scalars: int = 0,
        channels: int = 1,
    ) -> None:
        try:
            from torch_geometric.nn import GCNConv
        except ImportError as error:
            raise ImportError("GNN designers need torch-geometric: pip install 'kvmesh[gnn]'") from error

        super().__init__()
        self.agents, self.latent = agents, latent
        self.register_buffer("spatial_pairs", torch.tensor(list(spatial), dtype=torch.long).view(-1, 2))
        self.register_buffer("temporal_pairs", torch.tensor(list(temporal), dtype=torch.long).view(-1, 2))
        task = agents  # the virtual node's index
        links = {(i, j) for i, j in anchor} | {(j, i) for i, j in anchor}
        links |= {(i, task) for i in range(agents)} | {(task, i) for i in range(agents)}
        self.register_buffer("links", torch.tensor(sorted(links), dtype=torch.long).t().contiguous())
        self.project = nn.Linear(features, hidden)
        self.conv1 = GCNConv(hidden, hidden)
        self.conv2 = GCNConv(hidden, hidden)
        self.mu = _mlp(hidden, hidden, latent)
        self.logvar = _mlp(hidden, hidden, latent)
        self.spatial_source, self.spatial_target = nn.Linear(latent, latent), nn.Linear(latent, latent)
        self.spatial_bias = nn.Parameter(torch.zeros(len(spatial)))
        self.has_temporal = len(temporal) > 0
        if self.has_temporal:
            self.temporal_source, self.temporal_target = nn.Linear(latent, latent), nn.Linear(latent, latent)
            self.temporal_bias = nn.Parameter(torch.zeros(len(temporal)))
        self.channels = channels
        if channels > 1:
            self.spatial_channel = nn.Linear(2 * latent, channels)
            self.spatial_channel_bias = nn.Parameter(torch.zeros(len(spatial), channels))
            self.temporal_channel = nn.Linear(2 * latent, channels)
            self.temporal_channel_bias = nn.Parameter(torch.zeros(len(temporal), channels))
        self.scalars = scalars
        self.keep = _mlp(3 * latent + 2 * scalars, hidden, 1) if keep_head else None
        # cosines differ by tenths between agents: standardised, they weigh as much as the latents at once
        self.scalar_norm = nn.BatchNorm1d(2 * scalars) if keep_head and scalars else None

    def _batched_links(self, batch: int) -> torch.Tensor:
        nodes = self.agents + 1
        offsets = torch.arange(batch, device=self.links.device).repeat_interleave(self.links.shape[1]) * nodes
        return self.links.repeat(1, batch) + offsets

    def _pair_logits(self, z: torch.Tensor, pairs: torch.Tensor, source: nn.Linear, target: nn.Linear, bias):
        s, t = source(z[:, pairs[:, 0]]), target(z[:, pairs[:, 1]])  # (B, E, Z)
        return (s * t).sum(-1) / math.sqrt(self.latent) + bias

    def _channel_logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, E, C) and (B, T, C) channel logits of every candidate, or None without a choice."""
        if self.channels == 1:
            return None
        heads = (
            (self.spatial_pairs, self.spatial_channel, self.spatial_channel_bias),
            (self.temporal_pairs, self.temporal_channel, self.temporal_channel_bias),
        )
        return tuple(head(torch.cat([z[:, p[:, 0]], z[:, p[:, 1]]], dim=-1)) + bias for p, head, bias in heads)

    def forward(self, x: torch.Tensor, noise: torch.Generator | None = None) -> DesignerOutput:
        """`noise`: draw z = μ + σ·ε with this generator (training); None: z = μ (evaluation)."""
        batch, nodes, _ = x.shape
        h = torch.relu(self.project(x)).reshape(batch * nodes, -1)
        links = self._batched_links(batch)
        h = h + torch.relu(self.conv1(h, links))
        h = h + torch.relu(self.conv2(h, links))
        h = h.view(batch, nodes, -1)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-8.0, 8.0)
        if noise is not None:
            z = mu + torch.randn(mu.shape, generator=noise, dtype=mu.dtype) * (0.5 * logvar).exp()
        else:
            z = mu
        spatial = self._pair_logits(z, self.spatial_pairs, self.spatial_source, self.spatial_target, self.spatial_bias)
        if self.has_temporal:
            temporal = self._pair_logits(
                z, self.temporal_pairs, self.temporal_source, self.temporal_target, self.temporal_bias
            )
        else:
            temporal = z.new_zeros(batch, 0)
        keep = None
        if self.keep is not None:
            agents, task = z[:, : self.agents], z[:, self.agents :].expand(-1, self.agents, -1)
            scalars = x[:, : self.agents, x.shape[-1] - self.scalars :]
            scalars = torch.cat([scalars, scalars - scalars.mean(dim=1, keepdim=True)], dim=-1)
            if self.scalar_norm is not None:
                rows = scalars.reshape(-1, scalars.shape[-1])
                if rows.shape[0] > 1:
                    rows = self.scalar_norm(rows)
                else:  # one agent of one task has no batch statistics: use the running ones
                    norm = self.scalar_norm
                    rows = nn.functional.batch_norm(
                        rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
                    )
                scalars = rows.view_as(scalars)
            keep = self.keep(torch.cat([agents, task, agents * task, scalars], dim=-1)).squeeze(-1)
        return DesignerOutput(spatial, temporal, keep, mu, logvar, self._channel_logits(z))
