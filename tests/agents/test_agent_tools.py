"""Agent tools in the runtime: a tool-answered turn makes no model call, an `after` hook edits what others read."""

import pytest

from kvmesh import Agent, Task, Team
from kvmesh.agents import Tool, ToolTurn
from kvmesh.agents.tools import tool_from_name


class Echo(Tool):
    """Answers any turn that has inbound messages with the first one, upper-cased."""

    name = "echo"

    def before(self, turn: ToolTurn) -> str | None:
        return turn.inbound[0].content.upper() if turn.inbound else None


class Stamp(Tool):
    name = "stamp"

    def after(self, turn: ToolTurn, reply: str) -> str:
        return f"{reply}\n[stamped for {turn.task.id} by {turn.agent}]"


def agent(name, *tools, max_new_tokens=5):
    return Agent(name, model="tiny-random", max_new_tokens=max_new_tokens, tools=tools)


def test_a_tool_answered_turn_makes_no_model_call_and_costs_no_tokens(forwards):
    team = Team([agent("a"), agent("b", Echo()), agent("c")], "chain", decision="last")
    result = team.run(Task("Q?", id="t1"))
    a, b, c = result.messages
    assert b.content == a.content.upper()
    assert b.response_metadata == {"round": 0, "tool": "echo", "model_call": False}
    assert result.usage.per_agent["b"].calls == 0 and result.usage.per_agent["b"].total_tokens == 0
    assert result.usage.per_agent["a"].calls == 1 and result.usage.per_agent["c"].calls == 1
    assert "a->b" not in result.usage.per_edge  # nobody read a's message with a model
    assert f"Message from b (this round):\n{b.content}" in c.response_metadata["prompt"]
    assert [p[0] for p in result.prompts()] == ["a", "c"]
    assert result.to_dict()["messages"][1]["tool"] == "echo"
    assert len([shape for shape in forwards if shape[1] > 1]) == 2  # two prefills: a and c


def test_a_tool_without_an_answer_leaves_the_turn_to_the_model():
    team = Team([agent("a", Echo())], "chain", decision="last")  # no inbound: Echo passes
    result = team.run("Q?")
    assert result.usage.per_agent["a"].calls == 1 and "tool" not in result.messages[0].response_metadata


def test_an_after_hook_edits_what_the_next_agent_reads():
    team = Team([agent("a", Stamp()), agent("b")], "chain", decision="last")
    result = team.run(Task("Q?", id="t9"))
    first = result.messages[0]
    assert first.content.endswith("[stamped for t9 by a]")
    assert first.response_metadata["edited_by"] == ["stamp"]
    assert first.content in result.messages[1].response_metadata["prompt"]


def test_every_stage_answered_by_tools_still_finishes_and_batches_other_tasks():
    team = Team([agent("a"), agent("b", Echo()), agent("c", Echo())], "chain", decision="last")
    results = team.run_batch(["one?", "two?", "three?"])
    for result in results:
        a, b, c = result.messages
        assert c.content == b.content == a.content.upper()
        assert result.answer == c.content and result.usage.total.calls == 1


def test_tools_in_specs_by_name():
    team = Team([Agent("a", model="tiny-random", tools=["run-python"])], "chain", decision="last")
    data = team.to_spec()
    assert data["agents"][0]["tools"] == ["run-python"]
    again = Team.from_spec(data)
    assert [t.name for t in again.agents[0].tools] == ["run-python"] and again.agents[0].tools[0].runs_code


def test_bad_tools_are_named():
    with pytest.raises(ValueError, match="unknown tool 'calculator'; known tools: pass-tested-code, run-python"):
        Agent("a", tools=["calculator"])
    with pytest.raises(TypeError, match="tools must be Tool instances or tool names"):
        Agent("a", tools=[print])
    assert tool_from_name("pass-tested-code").name == "pass-tested-code"
