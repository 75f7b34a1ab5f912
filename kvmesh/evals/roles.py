"""Roles and prompts per benchmark, written for kvmesh, and the team a benchmark run uses by default.

Each benchmark names its roles in order; a team of N agents takes the first N (cycling). The decision maker
is told the answer format the scorer reads, so the final reply is extractable: "The answer is N" for GSM8K,
one fenced Python function for HumanEval, "Answer: X" for InfoQA.

InfoQA agents also get one worked example each (`Agent.examples`), in the exact layout of their real prompts:
SmolLM2-135M ignores "End with: Answer: X" but copies the format of an example turn.

Tools (`kvmesh.evals.tools`), attached only with `code_execution=True` because both run generated code:
- GSM8K: the programming expert's program is run and its output appended to its message.
- HumanEval: every agent, the decision maker included, passes on inbound code that already passes the
  prompt's docstring examples instead of calling the model.
"""

from __future__ import annotations

from kvmesh.agents import Agent, CommGraph, Team
from kvmesh.agents.decision import Decision
from kvmesh.agents.prompts import DECISION_INSTRUCTION, Inbound, user_turn
from kvmesh.agents.tools import Tool
from kvmesh.evals.tools import PassTestedCode, RunPython

ROLES: dict[str, list[tuple[str, str]]] = {
    "gsm8k": [
        ("math solver", "Solve the problem step by step with exact arithmetic. End with: The answer is N."),
        (
            "mathematical analyst",
            "Check the reasoning you are given, find mistakes, and give the correct result. End with: The answer is N.",
        ),
        (
            "programming expert",
            "Write a short Python calculation for the problem and state its result. End with: The answer is N.",
        ),
        ("inspector", "Compare your team's answers and keep the one that is correct. End with: The answer is N."),
    ],
    "humaneval": [
        ("project manager", "Restate what the function must do, its inputs, outputs and edge cases, briefly."),
        ("algorithm designer", "Describe an algorithm for the function in a few steps."),
        ("programming expert", "Write the complete function in one ```python block."),
        ("test analyst", "List inputs that could break the code you were given and what it should return."),
        ("bug fixer", "Fix any bug in the code you were given and write the complete function in one ```python block."),
    ],
    "infoqa": [
        (
            "team member",
            "Your private notes hold facts other agents lack. Copy the sentences from your notes and "
            "your team's messages that are about the people in the question. If you know the answer, end with: "
            "Answer: X",
        ),
    ],
}
DECISION_PROMPTS = {
    "gsm8k": "Read your team's solutions and give the final answer. End with: The answer is N.",
    "humaneval": "Read your team's messages and write the final complete function in one ```python block.",
    "infoqa": "Read your team's messages and answer the question with a few words. End with: Answer: X",
}


def _infoqa_examples() -> dict[str, tuple[tuple[str, str], ...]]:
    """Worked turns per InfoQA role (invented names outside the generator's pools). A member answers when its
    notes suffice and otherwise shares the fact it has; the decision maker joins two members' facts."""
    notes = "Ana lives in Rome. Tom has a cat. Tom works as a cook."
    known = user_turn("What is Tom's job?", None, notes, [], None)
    two_hop = "What is the job of Bo's sister?"
    partial = user_turn(two_hop, None, "Bo's sister is Lin. Bo lives in Oslo. Ana has a dog.", [], None)
    messages = [
        Inbound("agent_1", "decision", "text", "Bo's sister is Lin."),
        Inbound("agent_2", "decision", "text", "Lin works as a judge."),
    ]
    decision = user_turn(two_hop, None, None, messages, DECISION_INSTRUCTION)
    return {
        "team member": ((partial[0], "Bo's sister is Lin."), (known[0], "Tom works as a cook.\nAnswer: cook")),
        "solo": ((known[0], "Tom works as a cook.\nAnswer: cook"),),
        "decision maker": ((decision[0], "Lin works as a judge.\nAnswer: judge"),),
    }


EXAMPLES = {"infoqa": _infoqa_examples()}

# With code execution the GSM8K programmer writes a program to be run instead of stating its result.
PROGRAMMER_WITH_EXECUTION = (
    "Write a Python program in one ```python block that computes and prints the answer. It will be run and "
    "your team will see what it prints."
)


def _tools(benchmark: str, role: str) -> tuple[Tool, ...]:
    if benchmark == "gsm8k" and role == "programming expert":
        return (RunPython(),)
    if benchmark == "humaneval":
        return (PassTestedCode(),)
    return ()


def benchmark_agents(
    benchmark: str, count: int, model: str, max_new_tokens: int, code_execution: bool = False, solo: bool = False
) -> list[Agent]:
    roles = ROLES[benchmark]
    agents = []
    for i in range(count):
        role, prompt = roles[i % len(roles)]
        name = (
            f"agent_{i + 1}" if benchmark == "infoqa" else role.replace(" ", "_") + ("" if i < len(roles) else f"_{i}")
        )
        tools = _tools(benchmark, role) if code_execution else ()
        if tools and benchmark == "gsm8k":
            prompt = PROGRAMMER_WITH_EXECUTION
        system = f"You are the {role}. {prompt}"
        examples = EXAMPLES.get(benchmark, {}).get("solo" if solo else role, ())
        settings = {"model": model, "max_new_tokens": max_new_tokens, "examples": examples, "tools": tools}
        agents.append(Agent(name, role, system_prompt=system, **settings))
    return agents


def benchmark_team(
    benchmark: str,
    model: str,
    topology: str = "chain",
    agents: int = 3,
    rounds: int = 1,
    decision: str = "decision",
    max_new_tokens: int = 256,
    seed: int | None = None,
    code_execution: bool = False,
    channel: str = "text",
) -> Team:
    """The default team for a benchmark. `topology="single"` is one agent answering alone (the baseline);
    `code_execution` attaches the roles' tools, which run generated code in the sandbox; `channel` is set on
    every edge and on the decision maker's reading."""
    if topology == "single":
        members = benchmark_agents(benchmark, 1, model, max_new_tokens, code_execution, solo=True)
        return Team(members, CommGraph([members[0].name]), rounds=1, decision="last", seed=seed)
    members = benchmark_agents(benchmark, agents, model, max_new_tokens, code_execution)
    graph = CommGraph.preset(topology, [m.name for m in members]).with_channel(channel)
    if decision == "decision":
        maker = Agent(
            "decision",
            "decision maker",
            f"You are the decision maker. {DECISION_PROMPTS[benchmark]}",
            model=model,
            max_new_tokens=max_new_tokens,
            examples=EXAMPLES.get(benchmark, {}).get("decision maker", ()),
            tools=_tools(benchmark, "decision maker") if code_execution else (),
        )
        return Team(members, graph, rounds=rounds, decision=Decision("decision", maker, channel), seed=seed)
    return Team(members, graph, rounds=rounds, decision=decision, seed=seed)
