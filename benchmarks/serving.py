"""A team over HTTP against `kvmesh serve`: batched requests against one at a time, and the same greedy answers.

Starts `kvmesh serve --model M` on a free loopback port, then runs the same tasks through a team whose agents
are clients of it (`openai:http://127.0.0.1:PORT/v1#M`):

    one by one   `team.run(task)` for each task in turn: one request in flight at a time
    batched      `team.run_batch(tasks)`: every ready turn's request goes out at once; the server joins them
                 into its running batch (continuous batching)

and finally the same team in this process, to check that every answer over HTTP is the in-process greedy answer.
Both ways are timed in `--repeats` rounds, their order alternating, after `--warmup` untimed calls of each (one
task one by one; the whole batch) that warm the server's first forward passes and the client's connection
(`kvmesh.evals.timing`). `ratio` = one-by-one time / batched time within each round (equal work: the answers are
identical, so are the tokens); times and ratios are the median with the min and max over the rounds.

    python benchmarks/serving.py [--model smollm2-135m] [--tasks 16] [--agents 2] [--max-new-tokens 32] [--repeats 3]
        [--json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import add_timing_arguments, emit, free_port, shown, spread, tasks, team, transcripts, wait_until_up

from kvmesh.evals.timing import digest, time_modes


def start(model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", model, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_up(server, f"http://127.0.0.1:{port}/v1/models", "kvmesh serve", 300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    add_timing_arguments(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    port = free_port()
    server = start(args.model, port)
    try:
        over_http = team(f"openai:http://127.0.0.1:{port}/v1#{args.model}", args.agents, "chain", args.max_new_tokens)
        work = tasks(args.tasks)
        timings = time_modes(
            {
                "one_by_one": lambda: [over_http.run(task) for task in work],
                "batched": lambda: over_http.run_batch(work),
            },
            args.repeats,
            args.warmup,
            warm={"one_by_one": lambda: over_http.run(work[0])},
            fingerprint=lambda results: digest(transcripts(results)),
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    local = transcripts(team(args.model, args.agents, "chain", args.max_new_tokens).run_batch(work))
    over = timings.outputs  # the last round's; every round's have the same fingerprint when `agree`
    agree = all(timings.agree(mode) for mode in timings.modes)
    identical = agree and all(transcripts(over[mode]) == local for mode in timings.modes)
    ratios = timings.ratios("one_by_one", "batched")
    result = {
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "repeats": args.repeats,
        "one_by_one_s": spread(timings.seconds("one_by_one")),
        "batched_s": spread(timings.seconds("batched")),
        "ratio": spread(ratios, 2),
        "identical": identical,
        "tokens": sum(r.usage.total.total_tokens for r in over["batched"]),
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} tasks, {args.agents}-agent chain on {args.model} over HTTP (kvmesh serve); "
            f"median (min-max) of {args.repeats} rounds",
            f"one by one: {shown(timings.seconds('one_by_one'), unit=' s')}   "
            f"batched: {shown(timings.seconds('batched'), unit=' s')}   ratio per round {shown(ratios, unit='x')}",
            f"every answer, in every round, equals the in-process team's: {identical}",
        ],
    )


if __name__ == "__main__":
    main()
