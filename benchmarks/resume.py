"""Kill a real `kvmesh eval` run with SIGKILL halfway, resume it, and count finished samples lost and duplicated.

    python benchmarks/resume.py [--benchmark infoqa] [--limit 40] [--json]

The run is the ordinary CLI in a subprocess (its own process group, killed whole with SIGKILL once half the
samples are on disk), then `--resume` in a second subprocess. Prints the samples finished before the kill,
how many of them the resumed run lost (must be 0), the duplicates (must be 0) and the final count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvmesh.evals.store import read_samples


def eval_command(args: argparse.Namespace, out: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "kvmesh.cli", "eval", args.benchmark, "--topology", args.topology]
    command += ["--limit", str(args.limit), "--batch-size", str(args.batch_size), "--out", str(out)]
    command += ["--max-new-tokens", str(args.max_new_tokens), "--model", args.model]
    return command + (["--resume"] if resume else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="infoqa")
    parser.add_argument("--topology", default="chain")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "run")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        run = subprocess.Popen(eval_command(args, out, resume=False), start_new_session=True, **quiet)
        while len(read_samples(out)) < args.limit // 2:
            if run.poll() is not None:
                raise SystemExit(f"the run ended (status {run.returncode}) before half its samples were written")
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        before = {row["id"] for row in read_samples(out)}
        subprocess.run(eval_command(args, out, resume=True), check=True, **quiet)
        ids = [row["id"] for row in read_samples(out)]
        summary = json.loads(Path(out, "summary.json").read_text())

    result = {
        "finished_before_kill": len(before),
        "lost": len(before - set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "final_samples": len(ids),
        "expected_samples": args.limit,
        "summary_samples": summary["samples"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
