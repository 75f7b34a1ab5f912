"""How well the designers' relevance features point at the agent holding an InfoQA answer.

For each task, the agent whose private shard holds the answer fact is known from the generator. This script
asks which agent each feature ranks first: the cosine between the task and the whole shard's embedding, or
the best cosine between the task and any one sentence of the shard (the `relevance` feature designers read,
`kvmesh.topology.features`). Both are computed by the designers' own `NodeFeatures` on MiniLM.

    python benchmarks/designer_features.py [--split validation] [--tasks 200] [--json]
"""

from __future__ import annotations

import argparse
import json

from kvmesh import Agent, Task
from kvmesh.evals.benchmarks import infoqa
from kvmesh.llm.embedding import load_encoder
from kvmesh.topology.features import NodeFeatures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    generated = infoqa.generate(args.tasks, args.split)
    agents = [Agent(f"agent_{i + 1}", "team member", model="tiny-random") for i in range(len(generated[0].shards))]
    encoder = load_encoder("minilm")
    features = NodeFeatures(encoder, agents)(
        [Task(t.question, id=t.id, shards=t.shards) for t in generated]
    )  # (B, N + 1, F)
    d = encoder.dim
    shards, task, relevance = features[:, :-1, d : 2 * d], features[:, -1, 2 * d : 3 * d], features[:, :-1, 3 * d + 1]
    whole = (shards @ task.unsqueeze(-1)).squeeze(-1)
    holders = [{i for i, shard in enumerate(t.shards) if f"{t.answer}." in shard} for t in generated]
    hit = lambda scores: sum(int(s.argmax()) in h for s, h in zip(scores, holders, strict=True)) / len(generated)  # noqa: E731
    result = {"split": args.split, "tasks": len(generated), "whole_shard": hit(whole), "best_sentence": hit(relevance)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(generated)} {args.split} tasks: the agent ranked first holds the answer")
        print(f"  whole-shard cosine   {result['whole_shard']:.3f}")
        print(f"  best-sentence cosine {result['best_sentence']:.3f}  (the designers' relevance feature)")


if __name__ == "__main__":
    main()
