"""Batched against sequential: the same tasks through `Team.run_batch` and through `Team.run` one by one.

Both runs use the same team, model and greedy decoding in one process; the ratio is sequential time over
batched time (equal work, so it is the throughput ratio). Outputs are compared too: batching must not change
what the agents say.

    python benchmarks/batching.py [--tasks 16] [--agents 3] [--max-new-tokens 48] [--json]
"""

from __future__ import annotations

import argparse
import time

from common import emit, tasks, team


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--topology", default="chain")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--workload", default="math", choices=["math", "trivia"], help="task set")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    crew = team(args.model, args.agents, args.topology, args.max_new_tokens)
    work = tasks(args.tasks, args.workload)
    crew.run(work[0])  # warm-up: first-call allocations are not what we measure

    start = time.perf_counter()
    sequential = [crew.run(task) for task in work]
    sequential_s = time.perf_counter() - start

    start = time.perf_counter()
    batched = crew.run_batch(work)
    batched_s = time.perf_counter() - start

    same = sum(
        [m.content for m in a.messages] == [m.content for m in b.messages]
        for a, b in zip(sequential, batched, strict=True)
    )
    tokens = sum(r.usage.total.output_tokens for r in batched)
    result = {
        "benchmark": "batching",
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "topology": args.topology,
        "workload": args.workload,
        "max_new_tokens": args.max_new_tokens,
        "sequential_s": round(sequential_s, 3),
        "batched_s": round(batched_s, 3),
        "ratio": round(sequential_s / batched_s, 2),
        "generated_tokens": tokens,
        "identical_transcripts": f"{same}/{args.tasks}",
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} tasks, {args.agents} agents ({args.topology}) + decision, {args.model}",
            f"sequential (run x{args.tasks}): {sequential_s:.2f} s",
            f"batched    (run_batch):  {batched_s:.2f} s",
            f"throughput ratio: {sequential_s / batched_s:.2f}x   identical transcripts: {same}/{args.tasks}",
        ],
    )


if __name__ == "__main__":
    main()
