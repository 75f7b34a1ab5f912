"""Designers that choose each edge's channel (`channels`): every designer learns the choice from its signal,
its graphs run on the team it designs for, and a saved designer designs the same graphs after loading."""

import pytest
import torch

from kvmesh import Agent, Task, Team
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import infoqa
from kvmesh.topology import DESIGNERS, AGPConfig, EdgeLogitsConfig, GDesignerConfig, load_designer

LATENT = "kv-select@100"
CHOICES = ["text", LATENT]
# no cost in the utility: what a designer learns comes from its signal alone (under a time cost the latent channel
# would also be the cheaper one), and the test rewards text, the costlier channel
FREE = {"channels": CHOICES, "token_weight": 0.0}
SMALL = {
    "edge-logits": EdgeLogitsConfig(steps=8, batch_size=4, eval_every=4, prune_every=0, **FREE),
    "gdesigner": GDesignerConfig(steps=8, batch_size=4, eval_every=4, hidden=16, latent=8, lr=0.05, **FREE),
    "agp": AGPConfig(batch_size=4, mining_samples=3, fit_epochs=30, hidden=16, latent=8, threshold=0.4, **FREE),
}


def make_team():
    agents = [Agent(f"agent_{i}", "team member", model="tiny-random", max_new_tokens=3) for i in (1, 2, 3)]
    return Team(agents, "complete")


def tasks(split, count):
    return [Task(t.question, id=t.id, shards=t.shards) for t in infoqa.generate(count, split)]


def text_share(example, result) -> float:
    """A real, graph-dependent score: the share of the task's edges on text (0 without edges)."""
    edges = result.graph.edges()
    return sum(edge.channel == "text" for edge in edges) / len(edges) if edges else 0.0


def mean_text_probability(designer, batch) -> float:
    """The designer's mean probability of text over every candidate edge of `batch`."""
    with torch.no_grad():
        designer.module.eval()
        spatial, temporal = designer.probabilities(batch).channels
    return float(torch.cat([spatial.reshape(-1, 2), temporal.reshape(-1, 2)])[:, 0].mean())


@pytest.mark.parametrize("kind", list(DESIGNERS))
def test_every_designer_learns_which_channel_its_signal_rewards(kind, tiny):
    designer = DESIGNERS[kind](SMALL[kind], metric=text_share)
    team = make_team()
    designer.bind(team)
    batch = tasks("test", 4)
    before = mean_text_probability(designer, batch)
    designed = designer.compile(team, tasks("train", 8), tasks("validation", 4), progress=False)
    after = mean_text_probability(designer, batch)
    assert after > before + 0.05, (before, after)
    assert designer.config.cost == "time"  # choosing channels weighs time unless told otherwise
    results = designed.run_batch(batch)
    used = {edge.channel for result in results for edge in result.graph.edges()}
    assert used and used <= set(CHOICES)


def test_a_designed_team_sets_up_and_runs_the_latent_channels_its_graphs_choose(tiny):
    designer = DESIGNERS["edge-logits"](SMALL["edge-logits"], metric=text_share)
    team = make_team()
    designer.bind(team)
    with torch.no_grad():  # every edge, on the latent channel: what a designer rewarded for it would choose
        designer.module.spatial.fill_(5.0)
        designer.module.spatial_channel.copy_(torch.tensor([[0.0, 5.0]]).expand_as(designer.module.spatial_channel))
    designed = designer.apply(team)
    results = designed.run_batch(tasks("test", 2))
    assert {edge.channel for result in results for edge in result.graph.edges()} == {LATENT}
    assert designed.channel_stats()[LATENT]["calls"] > 0  # the team set the variant up and ran it


@pytest.mark.parametrize("kind", list(DESIGNERS))
def test_a_saved_channel_choosing_designer_designs_the_same_graphs(kind, tiny, tmp_path):
    designer = DESIGNERS[kind](SMALL[kind], metric=text_share)
    designer.compile(make_team(), tasks("train", 8), tasks("validation", 2), progress=False)
    designer.save(tmp_path / kind)
    loaded = load_designer(tmp_path / kind)
    batch = tasks("test", 4)
    graphs = designer.design_batch(batch)
    assert loaded.design_batch(batch) == graphs
    assert [[e.channel for e in g.edges()] for g in loaded.design_batch(batch)] == [
        [e.channel for e in g.edges()] for g in graphs
    ]
    assert loaded.config.channels == CHOICES and loaded.channels == CHOICES


def test_channel_lists_that_choose_nothing_or_name_nothing_are_refused():
    with pytest.raises(ConfigError, match="two or more, each once"):
        GDesignerConfig(channels=["text"])
    with pytest.raises(ConfigError, match="two or more, each once"):
        GDesignerConfig(channels=["text", "text"])
    with pytest.raises(ConfigError, match="not a kv-select variant"):
        GDesignerConfig(channels=["text", "kv-select@many"])
    assert GDesignerConfig(channels=CHOICES, cost="tokens").cost == "tokens"  # a cost given is kept
    assert GDesignerConfig().cost == "tokens"
