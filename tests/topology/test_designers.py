"""Designers on a real team (tiny random Llama) with the packaged MiniLM: gradients, determinism, pruning,
saving, training with checkpoints and exact resume."""

from dataclasses import replace

import pytest
import torch

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.agents.spec import SpecError
from kvmesh.evals.benchmarks import infoqa
from kvmesh.topology import (
    AGP,
    DESIGNERS,
    AGPConfig,
    EdgeLogitsConfig,
    EdgeLogitsDesigner,
    GDesigner,
    GDesignerConfig,
    load_designer,
)
from kvmesh.training.reinforce import batch_indices, policy_loss, rollouts

SMALL = {
    "edge-logits": EdgeLogitsConfig(steps=4, batch_size=2, eval_every=2, prune_every=2, pruning_rate=0.5),
    "gdesigner": GDesignerConfig(steps=4, batch_size=2, eval_every=2, hidden=16, latent=8),
    "agp": AGPConfig(batch_size=4, mining_samples=2, fit_epochs=10, hidden=16, latent=8),
}


def make_team(rounds=1):
    agents = [Agent(f"agent_{i}", "team member", model="tiny-random", max_new_tokens=3) for i in (1, 2, 3)]
    return Team(agents, "complete", rounds=rounds)


def tasks(split, count):
    return [Task(t.question, id=t.id, shards=t.shards) for t in infoqa.generate(count, split)]


def fewer_calls(example, result) -> float:
    """A real, graph-dependent score for plumbing tests: 1 when the team made at most two model calls."""
    return float(result.usage.total.calls <= 2)


POLICY_ONLY = {"sparsity_weight": 0.0, "kl_weight": 0.0, "anchor_weight": 0.0}


@pytest.mark.parametrize("kind", list(DESIGNERS))
def test_gradients_reach_every_trainable_parameter(kind, tiny):
    team = make_team(rounds=2)  # temporal candidates, so every head exists
    config = SMALL[kind] if kind == "edge-logits" else replace(SMALL[kind], **POLICY_ONLY)
    designer = DESIGNERS[kind](config)  # no regulariser: the REINFORCE term alone must reach every parameter
    designer.bind(team)
    batch = tasks("train", 4)
    samples, probs = designer.sample_batch(batch, torch.Generator().manual_seed(0))
    scored = rollouts(team, batch, [s.graph for s in samples], fewer_calls)
    utilities = torch.tensor([score - 0.5 * tokens / 500 for score, tokens, _ in scored])
    assert utilities.std() > 0  # different graphs cost different tokens
    loss, _ = policy_loss(designer, samples, probs, utilities)
    loss.backward()
    for name, parameter in designer.module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_agp_fit_loss_reaches_every_parameter(tiny):
    designer = AGP(SMALL["agp"])
    designer.bind(make_team(rounds=2))
    probs = designer.probabilities(tasks("train", 4), noise=torch.Generator().manual_seed(0))
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    spatial, temporal = (torch.rand(4, 6) > 0.5).float(), (torch.rand(4, 9) > 0.5).float()
    sum(designer.fit_loss(probs, keep, spatial, temporal).values()).backward()
    for name, parameter in designer.module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["gdesigner", "agp"])
def test_evaluation_graphs_are_deterministic_and_independent_of_the_batch(kind, tiny):
    designer = DESIGNERS[kind](SMALL[kind])
    designer.bind(make_team())
    batch = tasks("validation", 5)
    first = designer.design_batch(batch)
    assert first == designer.design_batch(batch)
    assert [designer.design(t) for t in batch] == first
    assert designer.design_batch(list(reversed(batch))) == list(reversed(first))


def test_a_pruned_agent_makes_no_model_call(tiny):
    team = make_team()
    designer = AGP(SMALL["agp"])
    designer.bind(team)
    designed = designer.apply(team)
    last = designer.module.keep[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-20.0)  # every keep probability ~0: only the likeliest agent runs
    (task,) = tasks("test", 1)
    result = designed.run(task)
    (kept,) = result.graph.agents
    assert [m.name for m in result.messages] == [kept, "decision"]
    assert set(result.usage.per_agent) == {kept, "decision"} and result.usage.total.calls == 2
    with torch.no_grad():
        last.bias.fill_(20.0)
    assert designed.run(task).usage.total.calls == 4  # everyone runs again


def test_edge_logits_prunes_by_magnitude_and_compiles_to_a_fixed_graph(tiny):
    team = make_team()
    designer = EdgeLogitsDesigner(SMALL["edge-logits"], metric=fewer_calls)
    designed = designer.compile(team, tasks("train", 4), tasks("validation", 2), progress=False)
    module = designer.module
    assert int(module.spatial_mask.sum()) == 2  # 6 edges, half pruned at updates 2 and 4: 6 -> 3 -> 2
    spatial, _ = module.probabilities()
    assert torch.all(spatial[~module.spatial_mask] == 0)
    assert designed.designer is None and designed.graph == designer.design(Task("any"))
    pruned_pairs = {designer.candidates.spatial[e] for e in (~module.spatial_mask).nonzero().flatten().tolist()}
    samples, _ = designer.sample_batch(tasks("train", 8), torch.Generator().manual_seed(3))
    names = designer.candidates.agents
    for sample in samples:
        assert not {(names.index(e.source), names.index(e.target)) for e in sample.graph.edges()} & pruned_pairs


@pytest.mark.parametrize("kind", list(DESIGNERS))
def test_save_and_load_round_trip(kind, tiny, tmp_path):
    team = make_team()
    designer = DESIGNERS[kind](SMALL[kind], metric=lambda example, result: float(result.messages[0].name < "agent_3"))
    designer.compile(team, tasks("train", 4), tasks("validation", 2), progress=False)
    designer.save(tmp_path / kind)
    loaded = load_designer(tmp_path / kind)  # rebuilds the team from the saved spec
    batch = tasks("test", 4)
    assert loaded.design_batch(batch) == designer.design_batch(batch)
    assert loaded.seen_ids == designer.seen_ids and len(loaded.seen_ids) == 6
    assert loaded.training == designer.training and loaded.config == designer.config
    for (name, a), b in zip(designer.module.state_dict().items(), loaded.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = Team([Agent(n, model="tiny-random") for n in ("x", "y")], "chain")
    with pytest.raises(ValueError, match="built for agents"):
        load_designer(tmp_path / kind, other)


class Interrupt(Exception):
    pass


def interrupting(after: int):
    """The plumbing metric, raising on its `after`-th call (a killed run)."""
    calls = {"n": 0}

    def metric(example, result):
        calls["n"] += 1
        if calls["n"] == after:
            raise Interrupt
        return fewer_calls(example, result)

    return metric


def test_reinforce_resumes_exactly_where_it_stopped(tiny, tmp_path):
    train, val = tasks("train", 4), tasks("validation", 2)
    whole = GDesigner(SMALL["gdesigner"], metric=fewer_calls)
    whole.compile(make_team(), train, val, out=tmp_path / "whole", progress=False)

    cut = GDesigner(SMALL["gdesigner"], metric=interrupting(after=2 + 2 + 2 + 2 + 1))  # normaliser, 2 updates, val
    with pytest.raises(Interrupt):
        cut.compile(make_team(), train, val, out=tmp_path / "cut", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        GDesigner(SMALL["gdesigner"], metric=fewer_calls).compile(make_team(), train, val, out=tmp_path / "cut")
    resumed = GDesigner(SMALL["gdesigner"], metric=fewer_calls)
    resumed.compile(make_team(), train, val, out=tmp_path / "cut", resume=True, progress=False)

    history = resumed.training["reinforce"]["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    timed = ("seconds", "call_seconds")
    untimed = lambda records: [{k: v for k, v in r.items() if k not in timed} for r in records]  # noqa: E731
    assert untimed(history) == untimed(whole.training["reinforce"]["history"])
    for a, b in zip(whole.module.state_dict().values(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another designer or configuration"):
        other = GDesigner(GDesignerConfig(steps=5, batch_size=2, hidden=16, latent=8), metric=fewer_calls)
        other.compile(make_team(), train, val, out=tmp_path / "cut", resume=True, progress=False)


def test_agp_mining_survives_a_kill_and_fits_the_mined_graphs(tiny, tmp_path):
    train = tasks("train", 8)
    config = SMALL["agp"]
    whole = AGP(config, metric=fewer_calls)
    whole.compile(make_team(), train, out=tmp_path / "whole", progress=False)
    cut = AGP(config, metric=interrupting(after=20))  # during the second batch of four tasks
    with pytest.raises(Interrupt):
        cut.compile(make_team(), train, out=tmp_path / "cut", progress=False)
    resumed = AGP(config, metric=fewer_calls)
    resumed.compile(make_team(), train, out=tmp_path / "cut", resume=True, progress=False)
    from kvmesh.evals.store import read_samples

    mined = {row["id"]: row for row in read_samples(tmp_path / "cut" / "mining")}
    assert sorted(mined) == sorted(t.id for t in train)  # every task once, none lost, none twice
    assert mined == {row["id"]: row for row in read_samples(tmp_path / "whole" / "mining")}
    # graphs of at most two calls (one agent and the decision) score 1, so the best mined graphs keep one agent
    assert all(len(row["graphs"][row["best"]]["agents"]) == 1 for row in mined.values() if row["best"] is not None)
    assert resumed.training["fit"]["solved"] == whole.training["fit"]["solved"] > 0


@pytest.mark.parametrize("cost", ["generated", "time"])
def test_designers_train_on_the_cost_chosen(tiny, cost):
    team, train, val = make_team(), tasks("train", 4), tasks("validation", 2)
    for _, spent, result in rollouts(team, train, None, fewer_calls, cost):  # each task's own usage, in that unit
        total = result.usage.total
        assert spent == (total.output_tokens if cost == "generated" else total.call_time_s) > 0
    designer = GDesigner(replace(SMALL["gdesigner"], cost=cost), metric=fewer_calls)
    designer.compile(team, train, val, progress=False)
    figures = designer.training["reinforce"]
    unit = "generated" if cost == "generated" else "call_seconds"
    for record in [*figures["history"], *figures["validation"]]:
        assert record["cost"] == pytest.approx(record[unit])
        expected = record["score"] - designer.config.token_weight * record["cost"] / figures["normaliser"]
        assert record["utility"] == pytest.approx(expected)
    if cost == "generated":  # deterministic: the own graph's mean completion tokens on the first batch
        first = [train[i] for i in batch_indices(len(train), designer.config.batch_size, 0, designer.config.seed)]
        own = rollouts(team, first, None, fewer_calls, "generated")
        assert figures["normaliser"] == max(1.0, sum(c for _, c, _ in own) / len(own))
    else:  # seconds of model calls: a fraction of what the run's tokens number
        assert 0 < figures["normaliser"] < 60 and figures["normaliser"] != figures["history"][0]["tokens"]


@pytest.mark.parametrize("kind", ["gdesigner", "agp"])
def test_a_cost_the_teams_own_graph_never_spends_is_refused_before_any_run(kind, tiny, tmp_path):
    calls = {"n": 0}

    def counting(example, result):
        calls["n"] += 1
        return 1.0

    designer = DESIGNERS[kind](replace(SMALL[kind], cost="kv-bytes"), metric=counting)
    with pytest.raises(ValueError, match=r"spends no KV bytes.*give token_normalizer"):  # a text team moves none
        designer.compile(make_team(), tasks("train", 4), out=tmp_path / kind, progress=False)
    assert calls["n"] == 0 and not (tmp_path / kind / "mining").exists()  # nothing ran, nothing was mined
    with pytest.raises(ValueError, match="cost must be one of"):
        GDesignerConfig(cost="dollars")


def test_bad_settings_and_misuse_get_clear_errors(tiny):
    with pytest.raises(ValueError, match="threshold"):
        GDesignerConfig(threshold=1.5)
    with pytest.raises(TypeError, match="expects AGPConfig settings"):
        AGP(GDesignerConfig())
    with pytest.raises(RuntimeError, match="not bound"):
        GDesigner().design(Task("Q?"))
    unsaved = GDesigner(SMALL["gdesigner"]).apply(make_team())
    with pytest.raises(SpecError, match="not saved"):
        unsaved.to_spec()
    with pytest.raises(ValueError, match="needs a metric"):
        GDesigner(SMALL["gdesigner"]).compile(make_team(), tasks("train", 2))
    mixed = make_team().with_graph(
        CommGraph(
            ["agent_1", "agent_2", "agent_3"], [("agent_1", "agent_2"), ("agent_2", "agent_3", "spatial", "kv-reuse")]
        )
    )
    with pytest.raises(ValueError, match="mixes"):
        GDesigner(SMALL["gdesigner"]).bind(mixed)


def test_gdesigner_starts_from_the_teams_graph(tiny):
    team = make_team().with_graph("chain")
    designer = GDesigner(SMALL["gdesigner"])
    designer.bind(team)
    assert [g.edge_set() for g in designer.design_batch(tasks("test", 3))] == [team.graph.edge_set()] * 3


def test_agp_tuning_keeps_the_fit_unless_an_update_validates_better(tiny):
    config = replace(SMALL["agp"], steps=2, eval_every=1)
    designer = AGP(config, metric=fewer_calls)
    designer.compile(make_team(), tasks("train", 4), tasks("validation", 2), progress=False)
    fitted, tuned = designer.training["validation"], designer.training["tune"]
    best = max([fitted["utility"], *(v["utility"] for v in tuned["validation"])])
    assert tuned["chosen"]["utility"] == best
    assert tuned["chosen"]["step"] in (0, 1, 2) and len(tuned["validation"]) == 2


def test_a_designer_only_binds_to_the_team_it_was_built_for(tiny, tmp_path):
    designer = GDesigner(SMALL["gdesigner"])
    designer.bind(make_team())
    designer.save(tmp_path / "d")
    for other, what in ((make_team(rounds=2), "several rounds"), (make_team().with_graph("complete"), None)):
        if what is None:
            load_designer(tmp_path / "d", other)  # the same agents, rounds and channel: fine
            continue
        with pytest.raises(ValueError, match=what):
            load_designer(tmp_path / "d", other)
        with pytest.raises(ValueError, match=what):
            designer.bind(other)
    reuse = make_team().with_graph(
        CommGraph.preset("complete", [f"agent_{i}" for i in (1, 2, 3)]).with_channel("kv-reuse")
    )
    with pytest.raises(ValueError, match="'kv-reuse' edges"):
        designer.bind(reuse)


def test_a_lone_agent_and_no_training_still_work(tiny):
    lone = Team([Agent("solo", "team member", model="tiny-random", max_new_tokens=3)], CommGraph(["solo"]))
    designer = AGP(replace(SMALL["agp"], steps=2, batch_size=2, eval_every=1), metric=lambda e, r: 1.0)
    questions = [Task(t.question, id=t.id) for t in tasks("train", 3)]
    designed = designer.compile(lone, questions[:2], questions[2:], progress=False)
    history = designer.training["tune"]["history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)  # no NaN from empty edge sets
    assert designed.run(Task("Who?")).graph.agents == ["solo"]
    still = GDesigner(replace(SMALL["gdesigner"], steps=0), metric=fewer_calls)
    still.compile(make_team(), tasks("train", 2), tasks("validation", 2), progress=False)
    assert still.training["reinforce"]["chosen"]["step"] == 0  # steps=0: validated once, as it started
    with pytest.raises(ValueError, match="batch_size >= 2"):
        GDesignerConfig(batch_size=1)


def test_a_checkpoint_refuses_other_examples(tiny, tmp_path):
    config = replace(SMALL["gdesigner"], steps=1)
    GDesigner(config, metric=fewer_calls).compile(make_team(), tasks("train", 2), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other training or validation examples"):
        GDesigner(config, metric=fewer_calls).compile(make_team(), tasks("train", 3), out=tmp_path, resume=True)


def test_a_run_saved_before_costs_had_units_resumes(tiny, tmp_path):
    """Checkpoints and mined lines written before `cost` and `channels` existed (tokens, no channel choice)."""
    train, val = tasks("train", 4), tasks("validation", 2)
    GDesigner(SMALL["gdesigner"], metric=fewer_calls).compile(make_team(), train, val, out=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for key in ("cost", "channels"):
        del state["config"][key]
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = GDesigner(SMALL["gdesigner"], metric=fewer_calls)
    resumed.compile(make_team(), train, val, out=tmp_path, resume=True, progress=False)
    assert resumed.training["reinforce"]["updates"] == SMALL["gdesigner"].steps
    with pytest.raises(ValueError, match="another designer or configuration"):  # a real change is still refused
        other = GDesigner(replace(SMALL["gdesigner"], cost="generated"), metric=fewer_calls)
        other.compile(make_team(), train, val, out=tmp_path, resume=True, progress=False)
