import json

import pytest

from kvmesh import SpecError, Team

SPEC_YAML = """
model: tiny-random
rounds: 2
decision: majority
token_budget: 900
agents:
  - {name: solver, role: math solver, max_new_tokens: 16}
  - {name: critic, role: critic, system_prompt: "Check the arithmetic.", temperature: 0.5}
graph: {preset: chain, options: {temporal: self}}
"""


def test_yaml_spec_loads_and_round_trips_through_json_and_yaml(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text(SPEC_YAML)
    team = Team.from_spec(path)
    assert team.agent_names == ["solver", "critic"] and team.rounds == 2 and team.token_budget == 900
    assert team.decision.method == "majority"
    assert team.graph.edge_set("temporal") == {("solver", "solver"), ("critic", "critic")}
    assert team.agents[1].system_prompt == "Check the arithmetic." and team.agents[1].temperature == 0.5
    for suffix in (".json", ".yaml"):
        out = tmp_path / f"again{suffix}"
        team.save_spec(out)
        again = Team.from_spec(out)
        assert again.to_spec() == team.to_spec()
        assert again.graph == team.graph
    json.loads((tmp_path / "again.json").read_text())


def test_decision_agent_round_trips(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "model": "tiny-random",
                "agents": [{"name": "a"}, {"name": "b"}],
                "decision": {"name": "judge", "role": "judge", "max_new_tokens": 8},
                "graph": {"edges": [{"source": "a", "target": "b"}]},
            }
        )
    )
    team = Team.from_spec(path)
    assert team.decision.agent.name == "judge" and team.decision.agent.max_new_tokens == 8
    assert Team.from_spec(team.to_spec()).to_spec() == team.to_spec()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents: []", "non-empty list"),
        ("- just a list", "must be a mapping"),
        ("agents: [{name: a}]\ncolour: blue", "unknown fields \\['colour'\\]"),
        (
            "agents: [{name: a, mood: happy}]",
            "unknown fields \\['mood'\\]; known: \\['name', 'role', 'system_prompt', 'model'",
        ),
        ("agents: [{role: nameless}]", "needs at least a 'name'"),
        ("agents: [{name: a}, {name: b}]\ngraph: ring", "unknown topology 'ring'"),
        ("agents: [{name: a}]\nrounds: 0", "rounds must be a positive integer"),
        ("agents: [{name: a}]\ndecision: coin-flip", "unknown decision 'coin-flip'"),
        ("agents: [{name: a}, {name: b}]\ngraph: {edges: [{source: a, target: c}]}", "unknown agent 'c'"),
        ("agents: [{name: a}\n", "does not parse"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as info:
        Team.from_spec(path)
    assert str(path) in str(info.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        Team.from_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is not a file"):
        Team.from_spec(tmp_path)


def test_a_saved_spec_with_rounds_but_no_temporal_edges_loads_with_a_warning(tmp_path, caplog):
    spec = tmp_path / "old.yaml"
    spec.write_text(
        "rounds: 2\nagents: [{name: a, model: tiny-random}, {name: b, model: tiny-random}]\n"
        "graph: {edges: [{source: a, target: b}]}\n"
    )
    with caplog.at_level("WARNING", logger="kvmesh"):
        team = Team.from_spec(spec)
    assert team.rounds == 2 and "no round reads the one before it" in caplog.text
    with pytest.raises(SpecError, match="no temporal edges"):  # a preset named with temporal: none is refused
        Team.from_spec(
            {"rounds": 2, "agents": [{"name": "a"}], "graph": {"preset": "chain", "options": {"temporal": "none"}}}
        )
