"""Why a REINFORCE designer can or cannot learn an edge: each edge's effect on the utility, against its noise.

On N validation tasks this runs the team's own graph and, for each of its spatial edges, the graph without that
edge and (with --channels) the graph with that edge on each other channel: every variant one batched, greedy
pass. Per variant it reports the paired mean change, variant minus own graph, in score, cost and utility
(utility = score − λ·cost / normaliser, the normaliser the own graph's mean cost, as training measures it) and
the standard deviation σ of the per-task utility change. REINFORCE estimates an edge's gradient from such
changes; the sign of a mean change of |Δ| is right with 95% confidence only after about (1.96·σ / |Δ|)² samples,
which the table puts beside the samples a default G-Designer run draws (steps × batch size).

    python benchmarks/designer_signal.py --model smollm2-135m --tasks 48                        # tokens
    python benchmarks/designer_signal.py --model smollm2-135m --tasks 48 --cost time --channels text kv-select@100
    python benchmarks/designer_signal.py --model tiny-random --tasks 4 --json

Caveat: greedy decoding measures what an edge does to the answers; the noise REINFORCE meets is larger (its
sampled graphs change several edges at once), so the samples needed are a lower bound.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace

from kvmesh.evals.benchmarks import benchmark_team, make_benchmark
from kvmesh.graph.edge import SPATIAL
from kvmesh.graph.graph import CommGraph
from kvmesh.topology.gdesigner import GDesignerConfig
from kvmesh.training.reinforce import rollouts
from kvmesh.training.reward import COSTS, utility


def variants(graph: CommGraph, channels: list[str]) -> dict[str, CommGraph]:
    """The own graph, then per spatial edge the graph without it and the graph with it on each other channel."""
    found = {"own graph": graph}
    edges = graph.edges()
    for edge in graph.edges(SPATIAL):
        others = [e for e in edges if e != edge]
        found[f"without {edge.key}"] = CommGraph(graph.agents, others)
        for channel in channels:
            if channel != edge.channel:
                found[f"{edge.key} on {channel}"] = CommGraph(graph.agents, [*others, replace(edge, channel=channel)])
    return found


def measure(args: argparse.Namespace) -> dict:
    benchmark = make_benchmark(args.benchmark)
    samples = benchmark.samples("validation")[: args.tasks]
    team = benchmark_team(args.benchmark, args.model, args.topology, args.agents, max_new_tokens=args.max_new_tokens)
    runs = {}
    for name, graph in variants(team.graph, args.channels).items():
        runs[name] = rollouts(team.with_graph(graph), samples, None, benchmark.reward, args.cost)
    own = runs["own graph"]
    normaliser = statistics.mean(cost for _, cost, _ in own) or 1.0
    weight = args.token_weight
    defaults = GDesignerConfig()
    drawn = defaults.steps * defaults.batch_size
    rows = []
    for name, scored in runs.items():
        changes = [
            (s - s0, c - c0, utility(s, c, weight, normaliser) - utility(s0, c0, weight, normaliser))
            for (s, c, _), (s0, c0, _) in zip(scored, own, strict=True)
        ]
        mean_utility = statistics.mean(u for _, _, u in changes)
        spread = statistics.stdev([u for _, _, u in changes]) if len(changes) > 1 else 0.0
        needed = (1.96 * spread / abs(mean_utility)) ** 2 if mean_utility else math.inf
        tokens = [
            r.usage.total.total_tokens - r0.usage.total.total_tokens
            for (_, _, r), (_, _, r0) in zip(scored, own, strict=True)
        ]
        rows.append(
            {
                "variant": name,
                "tokens_change": statistics.mean(tokens),
                "score_change": statistics.mean(s for s, _, _ in changes),
                "cost_change": statistics.mean(c for _, c, _ in changes),
                "utility_change": mean_utility,
                "utility_change_sd": spread,
                "samples_needed": needed,
            }
        )
    return {
        "benchmark": args.benchmark,
        "model": args.model,
        "tasks": len(samples),
        "cost": args.cost,
        "token_weight": weight,
        "normaliser": normaliser,
        "default_samples": drawn,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="infoqa")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--topology", default="complete")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--tasks", type=int, default=48, help="validation tasks (default 48)")
    parser.add_argument("--cost", choices=COSTS, default="tokens")
    parser.add_argument("--token-weight", type=float, default=GDesignerConfig().token_weight)
    parser.add_argument("--channels", nargs="+", default=[], help="channels an edge may move to")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['tasks']} {args.benchmark} validation tasks, {args.model}, cost {args.cost} (normaliser "
        f"{result['normaliser']:.4g}, λ {args.token_weight}); a default G-Designer run draws "
        f"{result['default_samples']}"
    )
    print(f"{'variant':44} {'Δscore':>8} {'Δcost':>10} {'Δutility':>9} {'σ':>7} {'samples needed':>15}")
    for row in result["rows"][1:]:
        needed = "never" if math.isinf(row["samples_needed"]) else f"{row['samples_needed']:.0f}"
        print(
            f"{row['variant']:44} {row['score_change']:+8.3f} {row['cost_change']:+10.4g} "
            f"{row['utility_change']:+9.4f} {row['utility_change_sd']:7.3f} {needed:>15}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
