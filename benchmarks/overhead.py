"""Runtime overhead: wall time of `Team.run` against the summed time of the model calls it makes.

Model-call time is what the generation engine reports as busy (`LocalLM.busy_s`: prefill, decode passes,
token choice, cache merging). Everything else (scheduling, prompt building, chat templates, token attribution
per edge, events, usage bookkeeping) is runtime overhead; the ratio wall / model-call time shows its cost.

    python benchmarks/overhead.py [--tasks 4] [--agents 4] [--topology complete] [--json]
"""

from __future__ import annotations

import argparse
import time

from common import emit, tasks, team


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=4, help="tasks run one after another with team.run")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--topology", default="complete")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workload", default="math", choices=["math", "trivia"], help="task set")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    crew = team(args.model, args.agents, args.topology, args.max_new_tokens, args.rounds)
    work = tasks(args.tasks, args.workload)
    crew.run(work[0])  # warm-up

    lm = crew.agents[0].llm
    busy_before = lm.busy_s
    start = time.perf_counter()
    calls = sum(crew.run(task).usage.total.calls for task in work)
    wall_s = time.perf_counter() - start
    model_s = lm.busy_s - busy_before
    result = {
        "benchmark": "overhead",
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "topology": args.topology,
        "workload": args.workload,
        "rounds": args.rounds,
        "agent_turns": calls,
        "wall_s": round(wall_s, 3),
        "model_call_s": round(model_s, 3),
        "ratio": round(wall_s / model_s, 4),
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} x team.run, {args.agents} agents ({args.topology}), {args.rounds} rounds, {args.model}",
            f"wall time: {wall_s:.2f} s   model calls ({calls} agent turns): {model_s:.2f} s",
            f"ratio wall / model calls: {wall_s / model_s:.3f}x",
        ],
    )


if __name__ == "__main__":
    main()
