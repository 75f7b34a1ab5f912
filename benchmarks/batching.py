"""Batched against sequential: the same tasks through `Team.run_batch` and through `Team.run` one by one.

Both run the same team, model and greedy decoding in one process, timed in `--repeats` rounds after a warm-up
(`kvmesh.evals.timing`: sequential warms up on one task, batched on the whole batch; the order alternates each
round). `ratio` is sequential time over batched time within each round (equal work, so it is the throughput
ratio), reported as the median with the min and max. Outputs are compared too: batching must not change what the
agents say, and every round must write the same transcripts.

    python benchmarks/batching.py [--tasks 16] [--agents 3] [--max-new-tokens 48] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse

from common import add_timing_arguments, emit, shown, spread, tasks, team, transcripts

from kvmesh.evals.timing import digest, time_modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--topology", default="chain")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--workload", default="math", choices=["math", "trivia"], help="task set")
    add_timing_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    crew = team(args.model, args.agents, args.topology, args.max_new_tokens)
    work = tasks(args.tasks, args.workload)
    timings = time_modes(
        {"sequential": lambda: [crew.run(task) for task in work], "batched": lambda: crew.run_batch(work)},
        args.repeats,
        args.warmup,
        warm={"sequential": lambda: crew.run(work[0])},  # first-call allocations are not what we measure
        fingerprint=lambda results: digest(transcripts(results)),
    )
    sequential, batched = timings.outputs["sequential"], timings.outputs["batched"]
    same = sum(a == b for a, b in zip(transcripts(sequential), transcripts(batched), strict=True))
    ratios = timings.ratios("sequential", "batched")
    result = {
        "benchmark": "batching",
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "topology": args.topology,
        "workload": args.workload,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "sequential_s": spread(timings.seconds("sequential")),
        "batched_s": spread(timings.seconds("batched")),
        "ratio": spread(ratios, 2),
        "generated_tokens": sum(r.usage.total.output_tokens for r in batched),
        "identical_transcripts": f"{same}/{args.tasks}",
        "rounds_agree": bool(timings.agree("sequential") and timings.agree("batched")),
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} tasks, {args.agents} agents ({args.topology}) + decision, {args.model}; "
            f"median (min-max) of {args.repeats} rounds",
            f"sequential (run x{args.tasks}): {shown(timings.seconds('sequential'), unit=' s')}",
            f"batched    (run_batch):  {shown(timings.seconds('batched'), unit=' s')}",
            f"throughput ratio, per round: {shown(ratios, unit='x')}   identical transcripts: {same}/{args.tasks}   "
            f"every round the same: {result['rounds_agree']}",
        ],
    )


if __name__ == "__main__":
    main()
