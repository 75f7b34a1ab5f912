"""`kvmesh eval` on Ray against the same evaluation in one process: identical samples, and the throughput ratio.

Runs InfoQA (the default team: 3 agents on a chain and a decision maker) on the first --limit test tasks both
ways, each run into a fresh temporary folder: in this process (torch's default threads), and on a local Ray
instance with --workers actors of one thread each. With --kill, one worker is killed while it runs a chunk, in
every Ray run; each run must still write every sample exactly once.

Timing (`kvmesh.evals.timing`): `--warmup` untimed runs of each way on a few tasks first (they load the model
here, start Ray and its actors, which load theirs: neither way's timed runs include loading, except a killed
worker's replacement), then `--repeats` rounds of both, their order alternating. `ratio` = single-process seconds
/ Ray seconds within each round; times and ratios are the median with the min and max over the rounds.
`identical`: every sample's answer, score and tokens are the same in every run of both ways.

    python benchmarks/ray_eval.py [--limit 32] [--workers 2] [--batch-size 4] [--kill] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from common import add_timing_arguments, emit, shown, spread

from kvmesh.evals.executors import RayExecutor
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import read_samples
from kvmesh.evals.timing import time_modes


def by_id(folder: Path) -> dict:
    return {r["id"]: (r["answer"], r["correct"], r["usage"]["total"]["total_tokens"]) for r in read_samples(folder)}


def kill_one_when_running(executor: RayExecutor, samples: Path, killed: list, done: threading.Event) -> None:
    """Kill the worker of a running chunk once the run has written a sample; give up when `done` (the run ended
    first), so that it cannot kill a worker of the next run."""
    import ray

    while not (samples.exists() and samples.read_text().strip()):
        if done.wait(0.05):
            return
    while not executor.running:
        if done.wait(0.01):
            return
    worker, chunk = next(iter(executor.running.values()))
    ray.kill(worker)
    killed.append(len(chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--kill", action="store_true")
    add_timing_arguments(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = EvalConfig("infoqa", model=args.model, limit=args.limit, batch_size=args.batch_size, max_new_tokens=48)
    warm_config = replace(config, limit=min(args.limit, args.batch_size * args.workers))  # a chunk for each actor
    root, runs = Path(tempfile.mkdtemp()), itertools.count()
    executor, killed, checks = RayExecutor(workers=args.workers), [], []

    def local(settings: EvalConfig = config) -> tuple[dict, Path]:
        folder = root / f"local{next(runs)}"
        return run_eval(settings, folder, progress=False), folder

    def on_ray(settings: EvalConfig = config, kill: bool = args.kill) -> tuple[dict, Path]:
        folder, done = root / f"ray{next(runs)}", threading.Event()
        if kill:
            watch = (executor, folder / "samples.jsonl", killed, done)
            threading.Thread(target=kill_one_when_running, args=watch, daemon=True).start()
        try:
            return run_eval(settings, folder, progress=False, executor=executor), folder
        finally:
            done.set()

    def check(_, outputs: dict[str, tuple[dict, Path]]) -> None:
        """Every sample once in the Ray run; this round's samples, both ways, the same as the first round's."""
        (_, local_folder), (_, ray_folder) = outputs["local"], outputs["ray"]
        ids = [json.loads(line)["id"] for line in (ray_folder / "samples.jsonl").read_text().splitlines()]
        first = checks[0]["samples"] if checks else by_id(local_folder)
        same = by_id(ray_folder) == by_id(local_folder) == first
        lost, duplicated = args.limit - len(set(ids)), len(ids) - len(set(ids))
        checks.append({"samples": first, "identical": same, "lost": lost, "duplicated": duplicated})

    timings = time_modes(
        {"local": local, "ray": on_ray},
        args.repeats,
        args.warmup,
        warm={"local": lambda: local(warm_config), "ray": lambda: on_ray(warm_config, kill=False)},
        on_round=check,
    )
    executor.close()
    (local_run, _), (spread_run, _) = timings.outputs["local"], timings.outputs["ray"]
    ratios = timings.ratios("local", "ray")
    identical = all(c["identical"] for c in checks)
    result = {
        "tasks": args.limit,
        "workers": spread_run["workers"],
        "repeats": args.repeats,
        "local_s": spread(timings.seconds("local"), 2),
        "ray_s": spread(timings.seconds("ray"), 2),
        "ratio": spread(ratios, 2),
        "identical": identical,
        "accuracy": [local_run["metrics"]["accuracy"]["value"], spread_run["metrics"]["accuracy"]["value"]],
        "killed_chunk_samples": killed,  # one per Ray run with --kill
        "deaths": executor.deaths,
        "lost": max(c["lost"] for c in checks),
        "duplicated": max(c["duplicated"] for c in checks),
    }
    emit(
        result,
        args.json,
        [
            f"InfoQA, {args.limit} test tasks, median (min-max) of {args.repeats} rounds: one process "
            f"{shown(timings.seconds('local'), 1, ' s')}, Ray with {spread_run['workers']} workers "
            f"{shown(timings.seconds('ray'), 1, ' s')}: ratio per round {shown(ratios, unit='x')}",
            f"identical samples (both ways, every round): {identical}",
            f"workers killed: {executor.deaths}; samples lost {result['lost']}, duplicated {result['duplicated']} "
            "(the worst round)",
        ],
    )


if __name__ == "__main__":
    main()
