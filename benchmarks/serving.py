"""A team over HTTP against `kvmesh serve`: batched requests against one at a time, and the same greedy answers.

Starts `kvmesh serve --model M` on a free loopback port, then runs the same tasks through a team whose agents
are clients of it (`openai:http://127.0.0.1:PORT/v1#M`):

    one by one   `team.run(task)` for each task in turn: one request in flight at a time
    batched      `team.run_batch(tasks)`: every ready turn's request goes out at once; the server joins them
                 into its running batch (continuous batching)

and finally the same team in this process, to check that every answer over HTTP is the in-process greedy answer.
`ratio` = one-by-one time / batched time (equal work: the answers are identical, so are the tokens).

    python benchmarks/serving.py [--model smollm2-135m] [--tasks 16] [--agents 2] [--max-new-tokens 32] [--json]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

from common import emit, tasks, team


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(model: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", model, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"kvmesh serve exited with {server.returncode}") from None
            time.sleep(0.5)
    server.kill()
    raise SystemExit("kvmesh serve did not start within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    port = free_port()
    server = start(args.model, port)
    try:
        over_http = team(f"openai:http://127.0.0.1:{port}/v1#{args.model}", args.agents, "chain", args.max_new_tokens)
        work = tasks(args.tasks)
        over_http.run(work[0])  # warm: the server's first forward passes, the client's connection
        started = time.perf_counter()
        one_by_one = [over_http.run(task) for task in work]
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        batched = over_http.run_batch(work)
        together = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    local = team(args.model, args.agents, "chain", args.max_new_tokens).run_batch(work)
    answers = [[m.content for m in r.messages] for r in local]
    identical = all([[m.content for m in r.messages] for r in runs] == answers for runs in (one_by_one, batched))
    result = {
        "model": args.model,
        "tasks": args.tasks,
        "agents": args.agents,
        "one_by_one_s": round(sequential, 3),
        "batched_s": round(together, 3),
        "ratio": round(sequential / together, 2),
        "identical": identical,
        "tokens": sum(r.usage.total.total_tokens for r in batched),
    }
    emit(
        result,
        args.json,
        [
            f"{args.tasks} tasks, {args.agents}-agent chain on {args.model} over HTTP (kvmesh serve)",
            f"one by one: {sequential:.2f} s   batched: {together:.2f} s   ratio {result['ratio']:.2f}x",
            f"every answer equals the in-process team's: {identical}",
        ],
    )


if __name__ == "__main__":
    main()
