"""Runtime overhead: wall time of `Team.run` against the summed time of the model calls it makes.

Model-call time is what the generation engine reports as busy (`LocalLM.busy_s`: prefill, decode passes,
token choice, cache merging). Everything else (scheduling, prompt building, chat templates, token attribution
per edge, events, usage bookkeeping) is runtime overhead; the ratio wall / model-call time shows its cost.
The tasks run `--repeats` times after `--warmup` untimed passes over the first task (`kvmesh.evals.timing`);
the ratio is taken within each repetition and reported as the median with the min and max.

    python benchmarks/overhead.py [--tasks 4] [--agents 4] [--topology complete] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse

from common import add_timing_arguments, emit, shown, spread, tasks, team

from kvmesh.evals.timing import time_modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=4, help="tasks run one after another with team.run")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--topology", default="complete")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workload", default="math", choices=["math", "trivia"], help="task set")
    add_timing_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    crew = team(args.model, args.agents, args.topology, args.max_new_tokens, args.rounds)
    work = tasks(args.tasks, args.workload)
    lm = crew.agents[0].llm

    def run_all() -> tuple[int, float]:
        """Agent turns, and the model's busy seconds while they ran."""
        busy_before = lm.busy_s
        calls = sum(crew.run(task).usage.total.calls for task in work)
        return calls, lm.busy_s - busy_before

    model_s: list[float] = []
    timings = time_modes(
        {"team.run": run_all},
        args.repeats,
        args.warmup,
        warm={"team.run": lambda: crew.run(work[0])},
        on_round=lambda _, outputs: model_s.append(outputs["team.run"][1]),
    )
    wall_s = timings.seconds("team.run")
    ratios = [wall / model for wall, model in zip(wall_s, model_s, strict=True)]
    calls = timings.outputs["team.run"][0]
    result = {
        "benchmark": "overhead",
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "topology": args.topology,
        "workload": args.workload,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "agent_turns": calls,
        "wall_s": spread(wall_s),
        "model_call_s": spread(model_s),
        "ratio": spread(ratios, 4),
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} x team.run, {args.agents} agents ({args.topology}), {args.rounds} rounds, {args.model}; "
            f"median (min-max) of {args.repeats} repetitions",
            f"wall time: {shown(wall_s, unit=' s')}   model calls ({calls} agent turns): {shown(model_s, unit=' s')}",
            f"ratio wall / model calls, per repetition: {shown(ratios, 3, unit='x')}",
        ],
    )


if __name__ == "__main__":
    main()
