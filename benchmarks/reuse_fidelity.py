"""How faithful the kv-reuse channel is inside a real team: the same InfoQA team with text edges and with kv-reuse
edges, on the same tasks, in one process.

    python benchmarks/reuse_fidelity.py [--split validation] [--limit 48] [--no-replies] [--json]
    python benchmarks/reuse_fidelity.py --runs KV_RUN TEXT_RUN   # compare two finished `kvmesh eval` runs

Prints each channel's exact-match accuracy, the kv-reuse run's reuse rate, and how many of its reused turns
wrote exactly the reply the text channel wrote (dense kv-reuse turns read the very ids a text turn reads, so
any difference comes from reused caches). `--no-replies` re-encodes the senders' replies and reuses only the
templates and the task (`ReuseConfig(replies=False)`), which isolates what reading reply caches costs.
No times: a kv-reuse team learns anchors as it runs, so a second pass would do other work than the first and
one pass is no timing (`kvmesh bench kv-reuse` times reuse against dense prefill, repeated).
"""

from __future__ import annotations

import argparse
import json

from kvmesh import ReuseConfig, Team
from kvmesh.evals.benchmarks import benchmark_team, make_benchmark
from kvmesh.evals.store import read_samples


def compare_runs(kv_run: str, text_run: str) -> dict:
    """The same counts from two saved runs over the same samples (kv-reuse first, text second)."""
    text = {row["id"]: row for row in read_samples(text_run)}
    kv = [row for row in read_samples(kv_run) if row["id"] in text]
    reused = [
        (a["content"], b["content"])
        for row in kv
        for b, a in zip(row["messages"], text[row["id"]]["messages"], strict=True)
        if b.get("kv_reuse") == "reused"
    ]
    return {
        "tasks": len(kv),
        "reused_turns": len(reused),
        "reused_turns_identical": sum(a == b for a, b in reused),
        "answers_identical": sum(row["answer"] == text[row["id"]]["answer"] for row in kv),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--topology", default="chain")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-replies", action="store_true", help="reuse templates and the task, not replies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", nargs=2, metavar=("KV_RUN", "TEXT_RUN"), help="compare two saved runs instead")
    args = parser.parse_args()
    if args.runs:
        print(json.dumps(compare_runs(*args.runs), indent=2))
        return

    benchmark = make_benchmark("infoqa", None, args.seed, False, "own")
    samples = benchmark.samples(args.split)[: args.limit]
    reuse = ReuseConfig(replies=not args.no_replies)
    runs = {}
    for channel in ("text", "kv-reuse"):
        base = benchmark_team("infoqa", args.model, args.topology, max_new_tokens=args.max_new_tokens, channel=channel)
        team = Team(base.agents, base.graph, decision=base.decision, seed=args.seed, reuse=reuse)
        runs[channel] = (team, team.run_batch([s.task for s in samples], batch_size=args.batch_size))

    (_, text), (team, kv) = runs["text"], runs["kv-reuse"]
    reused = [
        (a.content, b.content)
        for t, k in zip(text, kv, strict=True)
        for a, b in zip(t.messages, k.messages, strict=True)
        if b.response_metadata.get("kv_reuse") == "reused"
    ]

    def accuracy(results) -> float:
        return sum(benchmark.score(s, r.answer or "").correct for s, r in zip(samples, results, strict=True)) / len(
            samples
        )

    report = {
        "config": vars(args),
        "tasks": len(samples),
        "accuracy_text": accuracy(text),
        "accuracy_kv_reuse": accuracy(kv),
        "reuse_rate": team.channels["kv-reuse"].stats()["reuse_rate"],
        "reused_turns": len(reused),
        "reused_turns_identical": sum(a == b for a, b in reused),
        "answers_identical": sum(t.answer == k.answer for t, k in zip(text, kv, strict=True)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key != "config":
            print(f"{key:24} {value:.3f}" if isinstance(value, float) else f"{key:24} {value}")


if __name__ == "__main__":
    main()
