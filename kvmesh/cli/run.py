"""`kvmesh run "question"`: run a team on one question and print its transcript, answer and usage.

kvmesh run "What is 17 * 3?" --topology chain --agents 3 --rounds 1 --decision decision
kvmesh run "..." --spec team.yaml --json              # answer, messages (with exact prompts), usage
kvmesh run "..." --channel kv-reuse --graph-out team.png
kvmesh run "..." --designer runs/design/infoqa-agp    # a trained designer's team, on the graph it designs
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_METHOD, METHODS
from kvmesh.agents.result import TeamResult
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.cli.flags import add_channel_arguments, add_config_arguments, config_from_args, refuse_team_flags
from kvmesh.cli.specs import designer_folder, load_team
from kvmesh.config import ConfigError, check_choices
from kvmesh.evals.channel_settings import check_channel_settings
from kvmesh.evals.runner import EvalConfig
from kvmesh.graph.draw import write_picture
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.presets import PRESETS, TEMPORAL_MODES
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, channel_name, channels_help, save_channels
from kvmesh.topology import load_designer

DEFAULT_ROLES = ("analyst", "solver", "critic", "expert")


@dataclass
class RunConfig:
    """What `kvmesh run` runs.

    Args:
        question: the question to put to the team.
        model: alias, local folder or Hugging Face id.
        topology: communication graph preset.
        agents: number of agents.
        rounds: rounds of communication.
        temporal: edges between rounds: none, self (each agent reads its own last reply) or complete (each reads
            every agent's); default: complete when rounds > 1, else none.
        decision: how the final answer is chosen.
        spec: a YAML or JSON team spec; it sets the team, so the team options (model, topology, agents, rounds,
            temporal, decision, channel, max_new_tokens, temperature, token_budget, seed) are refused beside it.
        designer: a trained designer (kvmesh design train): its team, on the graph it designs (the team options
            are refused beside it, as with spec).
        channel: how agents read each other, on every edge.
        max_new_tokens: cap on tokens per agent turn.
        temperature: 0 for greedy decoding.
        token_budget: cap on tokens for the whole run.
        seed: seed for sampling.
        json: print one JSON object instead of text.
        graph_out: also write the graph with this run's edge tokens (.png, .svg, .mmd, .dot).
        channels: settings of the team's channel, by channel name (`--<channel>-<field>`; `--anchors DIR`: a
            folder that keeps kv-reuse's anchors across runs, loaded at the start and saved at the end; without
            it every run starts with none, so a single run reuses nothing).
    """

    question: str
    model: str = "smollm2-135m"
    topology: str = field(default="chain", metadata={"choices": PRESETS})
    agents: int = 3
    rounds: int = 1
    temporal: str | None = field(default=None, metadata={"choices": TEMPORAL_MODES})
    decision: str = field(default=DECISION_METHOD, metadata={"choices": METHODS})
    spec: str | None = None
    designer: str | None = None
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"check": channel_name, "more_help": channels_help})
    max_new_tokens: int = 256
    temperature: float = 0.0
    token_budget: int | None = None
    seed: int = 0
    json: bool = False
    graph_out: str | None = None
    channels: dict[str, dict] = field(default_factory=dict)

    # what a spec or a designer brings instead (refused beside them): eval's, and the sampling and budget flags
    team_fields: ClassVar[tuple[str, ...]] = (*EvalConfig.team_fields, "temperature", "token_budget", "seed")

    def __post_init__(self) -> None:
        check_choices(self)
        check_channel_settings(self)
        if self.agents < 1:
            raise ConfigError(f"{{agents}} must be at least 1, got {self.agents}", type(self).__name__)


def default_agents(count: int, model: str, max_new_tokens: int, temperature: float) -> list[Agent]:
    """`count` generic agents named agent_1..agent_N with roles cycling through DEFAULT_ROLES."""
    return [
        Agent(
            f"agent_{i + 1}",
            DEFAULT_ROLES[i % len(DEFAULT_ROLES)],
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        for i in range(count)
    ]


def build_team(config: RunConfig) -> Team:
    if config.designer:
        return load_designer(designer_folder(config.designer)).apply()
    if config.spec:
        return load_team(config.spec)
    agents = default_agents(config.agents, config.model, config.max_new_tokens, config.temperature)
    graph = CommGraph.preset(
        config.topology, agents, temporal=config.temporal, rounds=config.rounds, channel=config.channel
    )
    decision = {
        "method": config.decision,
        **({"channel": config.channel} if config.decision == DECISION_METHOD else {}),
    }
    return Team(
        agents,
        graph,
        rounds=config.rounds,
        decision=decision,
        token_budget=config.token_budget,
        seed=config.seed,
        channels=config.channels,
    )


def print_result(result: TeamResult, out=None) -> None:
    out = out or sys.stdout  # looked up when called: a default bound at import would miss a redirected stdout
    print(result.transcript(), file=out)
    if result.answer is not None:
        print(f"\nANSWER: {result.answer}", file=out)
    elif result.budget_exhausted:
        print("\nANSWER: none: the token budget was spent before any agent could answer", file=out)
    else:
        print("\nANSWER: none: no agent ran", file=out)
    if result.budget_exhausted:
        print(f"(stopped early: token budget spent; skipped {len(result.skipped)} turns)", file=out)
    elif result.stop_reason == "context":
        print(f"(stopped early: a prompt outgrew its model's context; skipped {len(result.skipped)} turns)", file=out)
    print("\n" + result.usage.table(), file=out)


def team_picture(team: Team, result: TeamResult, path: str) -> None:
    tokens = {key: usage.input_tokens for key, usage in result.usage.per_edge.items()}
    written = write_picture(result.graph, path, tokens=tokens, **team.picture_options())  # the graph it ran on
    print(f"graph picture: {written}", file=sys.stderr)  # stdout may be --json


SHOWN_STATS = ("calls", "reused_calls", "reused_tokens", "anchors_loaded")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(RunConfig, args)
    refuse_team_flags(args, RunConfig.team_fields)
    team = build_team(config)
    result = team.run(Task(config.question))
    save_channels(team.channels)  # kv-reuse's anchors, when a folder keeps them
    if config.graph_out:
        team_picture(team, result, config.graph_out)
    if team.designer is not None and not config.json:
        edges = ", ".join(f"{e.key} [{e.channel}]" for e in result.graph.edges()) or "none"
        print(f"designed graph: agents {', '.join(result.graph.agents)}; edges {edges}", file=sys.stderr)
    channels = team.channel_stats()
    if config.json:
        data = result.to_dict()
        fields = ("answer", "messages", "usage", "stop_reason", "graph")
        print(json.dumps({**{k: data[k] for k in fields}, "channels": channels}, indent=2))
    else:
        print_result(result)
        for name, stats in channels.items():  # what each channel did, and why when it did nothing
            counts = ", ".join(f"{key} {stats[key]}" for key in SHOWN_STATS if key in stats)
            print(f"\n{name}: {counts}" + (f"; {stats['note']}" if "note" in stats else ""))
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("run", help="run a team on one question")
    add_config_arguments(parser, RunConfig, skip=("channels",), positional={"question": None})
    add_channel_arguments(parser)
    parser.set_defaults(handler=run)
