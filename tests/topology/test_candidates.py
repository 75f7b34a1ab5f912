"""Candidate edges, sampled designs and thresholded designs: always DAGs, exact log-probabilities."""

import math

import networkx as nx
import pytest
import torch

from kvmesh import CommGraph
from kvmesh.graph.presets import PRESETS
from kvmesh.topology.candidates import Candidates, bernoulli_log_prob, sample_design, threshold_design

NAMES = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_dags_over_spatial_edges(preset):
    graph = CommGraph.preset(preset, NAMES)
    assert nx.is_directed_acyclic_graph(graph.spatial)


def test_candidates_are_every_ordered_pair_and_temporal_only_across_rounds():
    one, two = Candidates.build(NAMES[:3]), Candidates.build(NAMES[:3], rounds=2)
    assert len(one.spatial) == 6 and ("a", "a") not in {(one.agents[i], one.agents[j]) for i, j in one.spatial}
    assert one.temporal == () and len(two.temporal) == 9  # self-loops carry an agent's own last reply


def test_sampled_designs_are_dags_with_kept_agents_only():
    candidates = Candidates.build(NAMES, rounds=2)
    generator = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(200):
        spatial = torch.rand(len(candidates.spatial), generator=generator)
        temporal = torch.rand(len(candidates.temporal), generator=generator)
        keep = torch.rand(len(NAMES), generator=generator)
        sampled = sample_design(candidates, spatial, temporal, generator, keep)
        graph = sampled.graph
        assert nx.is_directed_acyclic_graph(graph.spatial)  # CommGraph would also have refused a cycle
        assert graph.agents and set(graph.agents) <= set(NAMES)
        assert graph.agents == [a for a in NAMES if a in graph.agents]  # the team's order is kept
        sizes.add(len(graph.agents))
        for edge in graph.edges():
            assert edge.source in graph.agents and edge.target in graph.agents
    assert sizes == {1, 2, 3, 4, 5}


def test_log_prob_is_that_of_the_choices_made_in_the_visiting_order():
    """Two agents: a->b (p 0.8) and b->a (p 0.3). An edge visited after its reverse was taken is no choice."""
    candidates = Candidates.build(["a", "b"])  # pairs: a->b, b->a
    spatial = torch.tensor([0.8, 0.3], requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    log = math.log
    allowed = {
        (): {round(log(0.2) + log(0.7), 6)},
        (("a", "b"),): {round(log(0.8), 6), round(log(0.7) + log(0.8), 6)},  # b->a skipped, or visited first
        (("b", "a"),): {round(log(0.3), 6), round(log(0.2) + log(0.3), 6)},
    }
    seen = set()
    for _ in range(300):
        sampled = sample_design(candidates, spatial, torch.zeros(0), generator)
        edges = tuple(sorted(sampled.graph.edge_set()))
        value = round(sampled.log_prob.item(), 6)
        assert value in allowed[edges], (edges, value)
        seen.add((edges, value))
    assert len(seen) == 5  # every outcome in every visiting order turned up
    sampled.log_prob.backward()
    assert spatial.grad is not None and spatial.grad.abs().sum() > 0


def test_bernoulli_log_prob_is_exact():
    probs = torch.tensor([0.9, 0.2, 0.5])
    value = bernoulli_log_prob(probs, torch.tensor([True, False, True]), torch.tensor([True, True, False]))
    assert value.item() == pytest.approx(math.log(0.9) + math.log(0.8))


def test_threshold_design_is_deterministic_and_prefers_the_likelier_direction():
    candidates = Candidates.build(["a", "b", "c"])  # pairs: ab ac ba bc ca cb
    spatial = torch.tensor([0.9, 0.2, 0.8, 0.7, 0.6, 0.1])
    graph = threshold_design(candidates, spatial, torch.zeros(0))
    assert graph.edge_set() == {("a", "b"), ("b", "c")}  # b->a would close a->b; c->a would close a->b->c
    assert graph == threshold_design(candidates, spatial, torch.zeros(0))
    assert {e.weight for e in graph.edges()} == {0.9, 0.7}
    pruned = threshold_design(candidates, spatial, torch.zeros(0), keep_probs=torch.tensor([0.1, 0.9, 0.95]))
    assert pruned.agents == ["b", "c"] and pruned.edge_set() == {("b", "c")}
    nobody = threshold_design(candidates, spatial, torch.zeros(0), keep_probs=torch.tensor([0.1, 0.3, 0.2]))
    assert nobody.agents == ["b"]  # at least the likeliest agent runs


def test_when_every_agent_is_dropped_the_likeliest_runs_and_the_draws_count_as_made():
    candidates = Candidates.build(["a", "b", "c"])
    keep = torch.tensor([0.3, 0.05, 0.05])
    generator = torch.Generator().manual_seed(0)
    forced = 0
    for _ in range(100):
        sampled = sample_design(candidates, torch.full((6,), 0.5), torch.zeros(0), generator, keep)
        if sampled.graph.agents == ["a"] and not sampled.graph.edges():
            dropped_all = round(sampled.log_prob.item(), 6) == round(math.log(0.7 * 0.95 * 0.95), 6)
            forced += dropped_all  # the path "all three dropped", with a kept by force
    assert forced > 10  # about 63% of draws drop everyone


CHOICES = ("text", "kv-select@30", "kv-select@100")  # two cache channels and one without


def test_sampled_channels_never_make_an_agent_read_caches_over_two_channels(tiny):
    """Every sampled graph is one a team accepts: the mask of the module docstring, under any probabilities."""
    from kvmesh import Agent, Team

    candidates = Candidates.build(NAMES[:4], rounds=2, channels=CHOICES)
    assert candidates.caches == (False, True, True) and candidates.choosing
    team = Team([Agent(n, model="tiny-random") for n in NAMES[:4]], "complete", rounds=2, channels={})
    generator = torch.Generator().manual_seed(0)
    used = set()
    for _ in range(100):
        spatial = torch.rand(len(candidates.spatial), generator=generator)
        temporal = torch.rand(len(candidates.temporal), generator=generator)
        channels = tuple(torch.rand(len(p), 3, generator=generator).softmax(-1) for p in (spatial, temporal))
        graph = sample_design(candidates, spatial, temporal, generator, channel_probs=channels).graph
        used |= {edge.channel for edge in graph.edges()}
        caches = {}
        for edge in graph.edges():
            if edge.channel != "text":
                caches.setdefault(edge.target, set()).add(edge.channel)
        assert all(len(names) == 1 for names in caches.values()), graph.to_dict()
        Team(team.agents, graph, rounds=2, repeat_rounds=True)  # the team's own checks accept it as it is
    assert used == set(CHOICES)  # every channel turns up


def test_a_channel_choice_counts_in_the_log_prob_as_drawn_from_the_allowed_channels():
    """a->b and c->b both kept (p 1): the edge decided first draws from all three channels, the second from what
    the first leaves it (text, or the first's cache channel), renormalised. The visiting order is random, so the
    log-probability must be that of the choices in one of the two orders."""
    candidates = Candidates.build(["a", "b", "c"], channels=CHOICES)
    keep = {("a", "b"), ("c", "b")}
    pairs = [(candidates.agents[i], candidates.agents[j]) for i, j in candidates.spatial]
    spatial = torch.tensor([float(pair in keep) for pair in pairs])
    p = {"text": 0.2, "kv-select@30": 0.5, "kv-select@100": 0.3}
    probs = torch.tensor([list(p.values())]).repeat(len(pairs), 1).requires_grad_()
    generator = torch.Generator().manual_seed(3)

    def log_prob(order: list[str]) -> float:
        total, reading = 0.0, None
        for name in order:
            allowed = [c for c in CHOICES if c == "text" or reading in (None, c)]
            total += math.log(p[name] / sum(p[c] for c in allowed))
            reading = name if name != "text" else reading
        return total

    seen = set()
    for _ in range(60):
        sampled = sample_design(
            candidates, spatial, torch.zeros(0), generator, channel_probs=(probs, torch.zeros(0, 3))
        )
        on = {(e.source, e.target): e.channel for e in sampled.graph.edges()}
        assert set(on) == keep
        ab, cb = on[("a", "b")], on[("c", "b")]
        assert len({ab, cb} - {"text"}) <= 1  # b reads caches over one channel at most
        orders = (log_prob([ab, cb]), log_prob([cb, ab]))
        assert any(sampled.log_prob.item() == pytest.approx(v, abs=1e-4) for v in orders), (on, orders)
        seen.add((ab, cb))
    assert len(seen) >= 5  # text with anything, one cache channel on both, one each side
    sampled.log_prob.backward()
    assert probs.grad.abs().sum() > 0


def test_the_evaluation_graph_puts_each_edge_on_its_likeliest_allowed_channel():
    candidates = Candidates.build(["a", "b", "c"], channels=CHOICES)
    pairs = [(candidates.agents[i], candidates.agents[j]) for i, j in candidates.spatial]
    spatial = torch.tensor([0.9 if pair == ("a", "b") else 0.8 if pair == ("c", "b") else 0.1 for pair in pairs])
    likeliest = {("a", "b"): [0.1, 0.2, 0.7], ("c", "b"): [0.3, 0.6, 0.1]}  # c->b prefers kv-select@30
    probs = torch.tensor([likeliest.get(pair, [1 / 3] * 3) for pair in pairs])
    graph = threshold_design(candidates, spatial, torch.zeros(0), channel_probs=(probs, torch.zeros(0, 3)))
    on = {(e.source, e.target): e.channel for e in graph.edges()}
    # a->b is decided first (likelier): kv-select@100; c->b may then not read over kv-select@30: text
    assert on == {("a", "b"): "kv-select@100", ("c", "b"): "text"}
