"""`kvmesh eval` on Ray against the same evaluation in one process: identical samples, and the throughput ratio.

Runs InfoQA (the default team: 3 agents on a chain and a decision maker) on the first --limit test tasks twice,
into temporary folders: once in this process (torch's default threads), once on a local Ray instance with
--workers actors of one thread each. With --kill, one worker is killed while it runs a chunk; the run must still
write every sample exactly once.

`ratio` = single-process seconds / Ray seconds (Ray's start and the actors' model loading included);
`identical`: every sample's answer, score and tokens are the same in both runs.

    python benchmarks/ray_eval.py [--limit 32] [--workers 2] [--batch-size 4] [--kill] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from common import emit

from kvmesh.evals.executors import RayExecutor
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import read_samples


def by_id(folder: Path) -> dict:
    return {r["id"]: (r["answer"], r["correct"], r["usage"]["total"]["total_tokens"]) for r in read_samples(folder)}


def kill_one_when_running(executor: RayExecutor, samples: Path, killed: list) -> None:
    import ray

    while not (samples.exists() and samples.read_text().strip()):
        time.sleep(0.05)
    while not executor.running:
        time.sleep(0.01)
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = EvalConfig("infoqa", model=args.model, limit=args.limit, batch_size=args.batch_size, max_new_tokens=48)
    root = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    local = run_eval(config, root / "local", progress=False)
    local_s = time.perf_counter() - started
    executor, killed = RayExecutor(workers=args.workers), []
    if args.kill:
        threading.Thread(
            target=kill_one_when_running, args=(executor, root / "ray" / "samples.jsonl", killed), daemon=True
        ).start()
    started = time.perf_counter()
    spread = run_eval(config, root / "ray", progress=False, executor=executor)
    ray_s = time.perf_counter() - started
    executor.close()
    ids = [json.loads(line)["id"] for line in (root / "ray" / "samples.jsonl").read_text().splitlines()]
    result = {
        "tasks": args.limit,
        "workers": spread["workers"],
        "local_s": round(local_s, 2),
        "ray_s": round(ray_s, 2),
        "ratio": round(local_s / ray_s, 2),
        "identical": by_id(root / "ray") == by_id(root / "local"),
        "accuracy": [local["metrics"]["accuracy"]["value"], spread["metrics"]["accuracy"]["value"]],
        "killed_chunk_samples": killed[0] if killed else 0,
        "deaths": executor.deaths,
        "lost": args.limit - len(set(ids)),
        "duplicated": len(ids) - len(set(ids)),
    }
    emit(
        result,
        args.json,
        [
            f"InfoQA, {args.limit} test tasks: one process {local_s:.1f} s, Ray with {spread['workers']} workers "
            f"{ray_s:.1f} s: ratio {result['ratio']:.2f}x; identical samples: {result['identical']}",
            f"workers killed: {executor.deaths}; samples lost {result['lost']}, duplicated {result['duplicated']}",
        ],
    )


if __name__ == "__main__":
    main()
