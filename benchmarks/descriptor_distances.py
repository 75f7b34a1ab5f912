"""Distances between the anchor descriptors of different texts: what the reuse engine's gamma and temperature see.

    python benchmarks/descriptor_distances.py [--model smollm2-135m]

Each text is encoded after the same short chat header, and its descriptor (`kvmesh.kvcomm.kv_reuse.anchors.describe`:
keys averaged over tokens, unit length) is compared with every other's. Prints the distance matrix and the
ranges within and across kinds of text: synthetic 1K-token notes (as in `kvmesh bench kv-reuse`), HumanEval
prompts, and two short replies.
"""

from __future__ import annotations

import argparse
import itertools
import random

from kvmesh import load_model
from kvmesh.evals.benchmarks.humaneval import load_humaneval
from kvmesh.evals.studies.kv_reuse import synthetic_text
from kvmesh.kvcomm.kv_reuse.anchors import describe
from kvmesh.llm.base import GenerationRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    llm = load_model(args.model)

    def encode(text: str) -> list[int]:
        return llm.tokenizer(text, add_special_tokens=False)["input_ids"]

    rng = random.Random(1)
    texts = {f"notes{i}": synthetic_text(rng, llm.tokenizer, 1024, lead="Notes:") for i in range(3)}
    texts |= {f"humaneval{i}": encode(p.prompt) for i, p in enumerate(load_humaneval()[:3])}
    texts |= {"reply0": encode("The answer is 42."), "reply1": encode("I think the baker lives in Oslo.")}
    marker = "\u2063"  # the chat template's text before a user turn's content
    head = encode(llm.render([("system", "You are a helpful agent."), ("user", marker)]).split(marker)[0])
    descriptors = {}
    for name, ids in texts.items():
        (row,) = llm.generate_requests([GenerationRequest(head + ids, max_new_tokens=0, keep_kv=True)])
        descriptors[name] = describe(row.prompt_kv.slice(len(head)).keys)

    names = list(descriptors)
    print(" " * 11 + " ".join(f"{n:>10}" for n in names))
    for a in names:
        print(f"{a:>10} " + " ".join(f"{(descriptors[a] - descriptors[b]).norm().item():10.3f}" for b in names))
    kinds: dict[str, list[float]] = {}
    for a, b in itertools.combinations(names, 2):
        kind = a.rstrip("0123456789") + " vs " + b.rstrip("0123456789")
        kinds.setdefault(kind, []).append((descriptors[a] - descriptors[b]).norm().item())
    for kind, values in kinds.items():
        print(f"{kind:24s} {min(values):.3f} .. {max(values):.3f}")


if __name__ == "__main__":
    main()
