"""`kvmesh demo`: what kvmesh is for, in about a minute on the embedded model.

1. Three agents, each holding part of the facts; only by relaying them can the team answer (a text chain, its
   transcript and usage).
2. The same two-agent team (`kvmesh bench latent`'s: a sender holding the notes, a receiver asking) over text and
   over a latent channel, kv-select at every layer with 5 latent thoughts (the best of 1, 5 and 20 thoughts in
   one 48-task InfoQA validation round, its interval overlapping the others'), on a few validation tasks: each
   task's answers side by side, then accuracy, seconds per task and tokens per task for each channel, measured in
   this run (after one untimed warm-up batch each). A handful of tasks shows the mechanism, not a result: the
   measured tables are `kvmesh bench latent`'s.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from kvmesh.agents.agent import Agent
from kvmesh.agents.decision import DECISION_METHOD
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.cli.run import print_result
from kvmesh.evals.benchmarks.infoqa import InfoQA, short_answer
from kvmesh.evals.studies.latent import LatentStudyConfig, run_batches, score_mode
from kvmesh.evals.studies.latent_teams import SENDER, kv_select_team, pair_team, tasks_for

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
        tasks: InfoQA validation tasks the side-by-side runs.
    """

    model: str = "smollm2-135m"
    tasks: int = 8


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


LATENT = "kv-select@100+t5"  # the latent channel the side-by-side shows (see the module docstring)


def side_by_side(model: str, count: int) -> list[str]:
    """The text relay and the latent channel on the same `count` InfoQA validation tasks: the printed lines."""
    config = LatentStudyConfig(model=model, split="validation", limit=count, batch_size=count)
    benchmark = InfoQA(None, 0)
    samples = benchmark.samples("validation")[:count]
    tasks = tasks_for(samples, SENDER)
    teams = {"text": pair_team(config, "text"), LATENT: kv_select_team(config, 100, thoughts=5)}
    results, seconds = {}, {}
    for name, team in teams.items():
        team.run_batch(tasks[:2])  # untimed warm-up
        started = time.perf_counter()
        results[name] = run_batches(team, tasks, config.batch_size)
        seconds[name] = (time.perf_counter() - started) / len(tasks)
    lines = [f"{'question':<44} {'gold':<10} {'text':<16} {LATENT}"]
    for index, sample in enumerate(samples):
        answers = [short_answer(results[name][index].answer or "")[:14] for name in teams]
        lines.append(f"{sample.task.question[:43]:<44} {sample.gold[:9]:<10} {answers[0]:<16} {answers[1]}")
    lines.append("")
    for name in teams:
        figures = score_mode(results[name], samples, benchmark)
        lines.append(
            f"{name:<18} correct {sum(figures['correct'])}/{len(samples)}, {seconds[name]:.2f} s/task, "
            f"{figures['generated_tokens']:.1f} generated and {figures['input_tokens']:.0f} input tokens/task "
            f"({figures['cache_read']:.0f} read from a cache, {figures['latent_steps']:.0f} latent steps)"
        )
    return lines


def demo(args: argparse.Namespace) -> int:
    config = config_from_args(DemoConfig, args)
    model = config.model
    print(f"kvmesh demo: 3 agents on {model}, chain topology; each agent holds private notes.\n")
    print(f"QUESTION: {DEMO_TASK.question}\n")
    print_result(demo_team(model).run(DEMO_TASK))
    print(
        f"\nThe same two agents over text and over {LATENT} (the receiver reads the sender's cache and 5 latent "
        f"thoughts in every layer), on {config.tasks} InfoQA validation tasks:\n"
    )
    print("\n".join(side_by_side(model, config.tasks)))
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="a three-agent team answering a question no agent can alone")
    add_config_arguments(parser, DemoConfig)
    parser.set_defaults(handler=demo)
