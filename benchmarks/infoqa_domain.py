"""Write the `infoqa-projects` benchmark's tasks as an InfoQA JSONL file (for tools that read files).

    python benchmarks/infoqa_domain.py --out runs/domains/projects.jsonl --count 200 --split test --seed 0
    kvmesh bench latent --data-path runs/domains/projects.jsonl --limit 200

The domain itself is a benchmark now (`kvmesh eval infoqa-projects`, `kvmesh.evals.benchmarks.infoqa_projects`);
each written line carries its `split`, so a loop that reads the file keeps the generator's disjoint splits.
The file is generated, never committed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from kvmesh.evals.benchmarks.infoqa_projects import generate_projects
from kvmesh.evals.benchmarks.splits import SPLITS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--count", type=int, default=200, help="tasks to write per split")
    parser.add_argument("--split", choices=SPLITS, action="append", help="splits to write (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tasks")
    args = parser.parse_args()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        replace(task, split=split).to_json()
        for split in args.split or ["test"]
        for task in generate_projects(args.count, split, args.seed)
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} tasks to {path}")


if __name__ == "__main__":
    main()
