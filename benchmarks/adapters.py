"""Mixed-adapter batching: rows on different LoRA adapters of one base model in one batch, against the alternatives.

Builds 4 LoRA adapters for the model (rank 8, seeded random nonzero A and B, saved with peft into a temporary
folder; peft's default targets for Llama, q_proj and v_proj, unless --targets says otherwise), then times, in one
process, the same 16 chat prompts (row i on adapter i mod 4), greedy, every row exactly --max-new-tokens tokens:

    mixed        the 16 rows in one running batch, 4 adapters per forward pass
    sequential   adapter by adapter: each adapter's 4 rows as their own batch, one adapter after another
    one adapter  the same 16 prompts all on adapter 0, in one batch (the cost of one adapter, for reference)

`ratio_vs_sequential` = sequential time / mixed time (equal work); `ratio_vs_one_adapter` = mixed throughput /
one-adapter throughput (equal tokens). `identical`: every mixed row's tokens equal that row run with its
adapter alone (the sequential run).

    python benchmarks/adapters.py [--model smollm2-135m] [--max-new-tokens 32] [--repeats 2] [--json]

A mixed batch runs a few small matrix products per adapter and LoRA layer; on a machine whose cores another
process is using, several OpenMP threads make those far slower (set OMP_NUM_THREADS=1 there).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import QUESTIONS, emit

from kvmesh import load_model
from kvmesh.llm.base import GenerationRequest

ADAPTERS = 4


def build_adapters(lm, folder: Path, rank: int, targets: list[str] | None) -> list[str]:
    """Save `ADAPTERS` seeded LoRA adapters of `lm`'s model into `folder`; returns their folders."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(lm.model.config._name_or_path, dtype=lm.model.dtype)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    paths = []
    for seed in range(ADAPTERS):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name:  # B nonzero, small enough that the model still writes text
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        path = folder / f"adapter{seed}"
        model.save_pretrained(path)
        paths.append(str(path))
    return paths


def timed(lm, requests: list[list[GenerationRequest]], repeats: int) -> tuple[float, list]:
    """Run each group of rows as its own batch, one group after another; best time of `repeats`, last results."""
    best, results = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        results = [generation for group in requests for generation in lm.generate_requests(group)]
        best = min(best, time.perf_counter() - start)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="*", default=None, help="LoRA target modules (default: peft's)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per method")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    lm = load_model(args.model)
    tokens = args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        adapters = build_adapters(lm, Path(tmp), args.rank, args.targets)
        prompts = [lm.encode_prompt(lm.render([("user", QUESTIONS[i % len(QUESTIONS)])])) for i in range(args.rows)]

        def row(i: int, adapter: str) -> GenerationRequest:
            return GenerationRequest(prompts[i], tokens, min_new_tokens=tokens, adapter=adapter)

        mixed_rows = [row(i, adapters[i % ADAPTERS]) for i in range(args.rows)]
        by_adapter = [[i for i in range(args.rows) if i % ADAPTERS == k] for k in range(ADAPTERS)]
        sequential_rows = [[mixed_rows[i] for i in group] for group in by_adapter]
        one_rows = [row(i, adapters[0]) for i in range(args.rows)]

        lm.generate_requests(mixed_rows[:ADAPTERS])  # warm-up: loads the adapters, first-call allocations
        mixed_s, mixed = timed(lm, [mixed_rows], args.repeats)
        sequential_s, sequential = timed(lm, sequential_rows, args.repeats)
        one_s, one = timed(lm, [one_rows], args.repeats)
        alone = dict(zip([i for group in by_adapter for i in group], sequential, strict=True))
        same = sum(mixed[i].token_ids == alone[i].token_ids for i in range(args.rows))
        others = [i for i in range(args.rows) if i % ADAPTERS != 0]  # same prompt, another adapter than in `one`
        changed = sum(mixed[i].token_ids != one[i].token_ids for i in others)

    result = {
        "benchmark": "adapters",
        "model": args.model,
        "rows": args.rows,
        "adapters": ADAPTERS,
        "rank": args.rank,
        "targets": args.targets or "peft default",
        "max_new_tokens": tokens,
        "mixed_s": round(mixed_s, 3),
        "sequential_s": round(sequential_s, 3),
        "one_adapter_s": round(one_s, 3),
        "ratio_vs_sequential": round(sequential_s / mixed_s, 2),
        "ratio_vs_one_adapter": round(one_s / mixed_s, 2),  # equal tokens: throughput(mixed) / throughput(one)
        "identical": same == args.rows,
        "identical_rows": f"{same}/{args.rows}",
        "adapter_changes_output": f"{changed}/{len(others)}",  # rows whose text differs from adapter 0's
    }
    emit(
        result,
        args.json,
        [
            f"{args.rows} rows over {ADAPTERS} LoRA adapters (rank {args.rank}) on {args.model}, {tokens} tokens each",
            f"mixed       (1 batch, {ADAPTERS} adapters):      {mixed_s:.2f} s",
            f"sequential  ({ADAPTERS} batches, adapter by adapter): {sequential_s:.2f} s",
            f"one adapter (1 batch, 1 adapter):      {one_s:.2f} s",
            f"mixed vs sequential: {sequential_s / mixed_s:.2f}x   mixed vs one adapter: {one_s / mixed_s:.2f}x of its "
            f"throughput",
            f"identical to each adapter alone: {same}/{args.rows}   differ from adapter 0: {changed}/{len(others)}",
        ],
    )


if __name__ == "__main__":
    main()
