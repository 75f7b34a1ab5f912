"""Roles and prompts per benchmark, written for kvmesh, and the team a benchmark run uses by default.

Each benchmark names its roles in order; a team of N agents takes the first N (cycling). The decision maker
is told the answer format the scorer reads, so the final reply is extractable: "The answer is N" for GSM8K,
one fenced Python function for HumanEval, "Answer: X" for InfoQA.
"""

from __future__ import annotations

from kvmesh.agents import Agent, CommGraph, Team

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


def benchmark_agents(benchmark: str, count: int, model: str, max_new_tokens: int) -> list[Agent]:
    roles = ROLES[benchmark]
    agents = []
    for i in range(count):
        role, prompt = roles[i % len(roles)]
        name = (
            f"agent_{i + 1}" if benchmark == "infoqa" else role.replace(" ", "_") + ("" if i < len(roles) else f"_{i}")
        )
        agents.append(
            Agent(name, role, system_prompt=f"You are the {role}. {prompt}", model=model, max_new_tokens=max_new_tokens)
        )
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
) -> Team:
    """The default team for a benchmark. `topology="single"` is one agent answering alone (the baseline)."""
    if topology == "single":
        members = benchmark_agents(benchmark, 1, model, max_new_tokens)
        return Team(members, CommGraph([members[0].name]), rounds=1, decision="last", seed=seed)
    members = benchmark_agents(benchmark, agents, model, max_new_tokens)
    if decision == "decision":
        maker = Agent(
            "decision",
            "decision maker",
            f"You are the decision maker. {DECISION_PROMPTS[benchmark]}",
            model=model,
            max_new_tokens=max_new_tokens,
        )
        return Team(members, topology, rounds=rounds, decision=maker, seed=seed)
    return Team(members, topology, rounds=rounds, decision=decision, seed=seed)
