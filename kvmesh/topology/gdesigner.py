"""`gdesigner`: G-Designer, a variational graph encoder that designs each task's graph.

Node features come from the packaged MiniLM (`kvmesh.topology.features`: role profile, private notes, task,
relevance); a task virtual node joins every agent; two torch-geometric GCN layers and MLPs give a latent per
node; edge logits are decoded from pairs of latents (`kvmesh.topology.gnn`). Training is REINFORCE with a
batch-mean baseline on utility = score − λ·cost / normaliser, plus

    sparsity   w_s · mean edge probability                      (fewer messages)
    KL         w_kl · KL(q(z | x) || N(0, I))                    (the variational encoder's prior)
    anchor     w_a · BCE(spatial edge probabilities, the team's spatial edges)   (stay near the user's topology)

Training starts from the team's own graph: each candidate's logit bias, spatial and temporal, begins at
+`anchor_logit` for the team's edges and −`anchor_logit` for the others. The regulariser weights are small
on purpose: Adam scales a steady gradient up to a full step, so a sparsity term as large as the noisy
REINFORCE signal switches every edge off (on InfoQA with a sparsity weight of 0.1, every edge was off within
8 updates, at 4% validation accuracy). Every module trains. Spatial graphs are sampled as DAGs; evaluation is
deterministic (the latent mean, thresholded probabilities), so a task always gets the same graph. The batch
baseline needs two tasks or more per update.

Caveat: like G-Designer, it removes edges, not agents: every agent still runs (see `agp` for that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.topology.designer import Designer, DesignerConfig, Probabilities
from kvmesh.topology.features import EXTRA_FEATURES, NodeFeatures
from kvmesh.topology.gnn import DesignerNet, DesignerOutput


@dataclass
class GDesignerConfig(DesignerConfig):
    """Settings of the G-Designer GNN.

    Args:
        hidden: width of the GCN layers.
        latent: width of each node's latent.
        sparsity_weight: weight of the mean edge probability in the loss.
        kl_weight: weight of the KL term of the variational encoder.
        anchor_weight: weight of the BCE between edge probabilities and the team's own graph.
        anchor_logit: initial edge-logit bias, + for the team's own edges and − for the other candidates, so
            training starts from the team's graph (the anchor) rather than from a coin flip per edge.
        encoder: sentence encoder for node features: minilm (packaged), a folder or a Hugging Face id.
    """

    hidden: int = 64
    latent: int = 32
    sparsity_weight: float = 0.01
    kl_weight: float = 0.001
    anchor_weight: float = 0.01
    anchor_logit: float = 1.0
    encoder: str = "minilm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps and self.batch_size < 2:
            raise ConfigError("the batch-mean baseline needs {batch_size} >= 2: one task would be its own baseline")


class GDesigner(Designer):
    kind = "gdesigner"
    config_class = GDesignerConfig

    def _build(self, team: Team) -> None:
        from kvmesh.llm.embedding import load_encoder

        config: GDesignerConfig = self.config
        self.features = NodeFeatures(load_encoder(config.encoder), team.agents)  # the encoder caches by text
        anchor = self.anchor_pairs(team)
        self.module = DesignerNet(
            self.features.dim,
            len(team.agents),
            self.candidates.spatial,
            self.candidates.temporal,
            anchor,
            config.hidden,
            config.latent,
            keep_head=self.prunes_agents,
            scalars=EXTRA_FEATURES,
            channels=len(self.candidates.channels),
        )
        anchored = set(anchor)
        self.anchor_target = torch.tensor([float(pair in anchored) for pair in self.candidates.spatial])
        index = {name: i for i, name in enumerate(team.agent_names)}
        temporal = {(index[e.source], index[e.target]) for e in team.graph.edges("temporal")}
        temporal_target = torch.tensor([float(pair in temporal) for pair in self.candidates.temporal])
        with torch.no_grad():  # start from the anchor: its edges likely, the others not
            self.module.spatial_bias.copy_(config.anchor_logit * (2 * self.anchor_target - 1))
            if self.module.has_temporal:
                self.module.temporal_bias.copy_(config.anchor_logit * (2 * temporal_target - 1))

    def probabilities(self, tasks: Sequence[Task], noise: torch.Generator | None = None) -> Probabilities:
        return self.from_output(self.module(self.features(tasks), noise))

    @staticmethod
    def from_output(output: DesignerOutput) -> Probabilities:
        keep = torch.sigmoid(output.keep) if output.keep is not None else None
        channels = tuple(logits.softmax(-1) for logits in output.channels) if output.channels else None
        return Probabilities(torch.sigmoid(output.spatial), torch.sigmoid(output.temporal), keep, output, channels)

    def regularizers(self, probs: Probabilities) -> dict[str, torch.Tensor]:
        config: GDesignerConfig = self.config
        edges = torch.cat([probs.spatial, probs.temporal], dim=-1)
        terms = {"kl": config.kl_weight * probs.extra.kl()}
        if edges.numel():  # a lone agent has no candidate edges
            target = self.anchor_target.expand_as(probs.spatial)
            anchor = torch.nn.functional.binary_cross_entropy(probs.spatial.clamp(1e-6, 1 - 1e-6), target)
            terms |= {"sparsity": config.sparsity_weight * edges.mean(), "anchor": config.anchor_weight * anchor}
        return terms
