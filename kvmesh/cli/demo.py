"""`kvmesh demo`: three agents, each holding part of the facts; only by relaying them can the team answer."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_METHOD
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.cli.run import print_result

DEMO_TASK = Task(
    id="demo",
    question="In which city does Maya's sister live?",
    shards=[
        "Maya has one sister. Her sister is called Lena. Maya works as a nurse.",
        "Lena lives in Lisbon. Tom lives in Oslo.",
        "Lena likes to paint. Tom has a dog.",
    ],
)


@dataclass
class DemoConfig:
    """What `kvmesh demo` runs.

    Args:
        model: alias, local folder or Hugging Face id.
    """

    model: str = "smollm2-135m"


def demo_team(model: str = "smollm2-135m") -> Team:
    """Three agents, each holding part of the facts; only by relaying them can the team answer."""
    agents = [
        Agent("family", "family expert", model=model, max_new_tokens=48),
        Agent("places", "places expert", model=model, max_new_tokens=48),
        Agent("hobbies", "hobbies expert", model=model, max_new_tokens=48),
    ]
    for agent in agents:  # small models relay facts far better than they reason about them
        agent.system_prompt = (
            f"You are the {agent.role}. Copy the sentences from your notes that are about the people in the "
            "question. Do not add anything else."
        )
    return Team(agents, "chain", rounds=1, decision=DECISION_METHOD)


def demo(args: argparse.Namespace) -> int:
    model = config_from_args(DemoConfig, args).model
    print(f"kvmesh demo: 3 agents on {model}, chain topology; each agent holds private notes.\n")
    print(f"QUESTION: {DEMO_TASK.question}\n")
    print_result(demo_team(model).run(DEMO_TASK))
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="a three-agent team answering a question no agent can alone")
    add_config_arguments(parser, DemoConfig)
    parser.set_defaults(handler=demo)
