"""The teams an Optima run compares: the prompt-only compact team is told the protocol and shown its format."""

from kvmesh.evals.benchmarks.base import team_for
from kvmesh.evals.benchmarks.infoqa import InfoQA
from kvmesh.training.optima.config import COMPACT_PROTOCOL
from kvmesh.training.optima.teams import compact_spec, policy_spec


def test_the_compact_team_is_told_the_protocol_and_shown_terse_examples():
    spec = team_for(InfoQA, "tiny-random", "complete", agents=3, max_new_tokens=4).to_spec()
    compact = compact_spec(spec, InfoQA)
    members = [*compact["agents"], compact["decision"]]
    originals = [*spec["agents"], spec["decision"]]
    for member, original in zip(members, originals, strict=True):
        assert member["system_prompt"] == original["system_prompt"] + "\n" + COMPACT_PROTOCOL
        assert member["examples"] == [list(pair) for pair in InfoQA.terse_examples(member["role"])]
    assert spec["agents"][0]["examples"] != compact["agents"][0]["examples"]  # the original spec is untouched
    sampled = policy_spec(compact, None, 0.5)
    assert {m["temperature"] for m in [*sampled["agents"], sampled["decision"]]} == {0.5}
