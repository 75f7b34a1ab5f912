"""Mixed-adapter batching: rows on different LoRA adapters of one base model in one batch, against the alternatives.

Builds 4 LoRA adapters for the model (rank 8, seeded random nonzero A and B, saved with peft into a temporary
folder; peft's default targets for Llama, q_proj and v_proj, unless --targets says otherwise), then times, in one
process, the same 16 chat prompts (row i on adapter i mod 4), greedy, every row exactly --max-new-tokens tokens:

    mixed        the 16 rows in one running batch, 4 adapters per forward pass
    sequential   adapter by adapter: each adapter's 4 rows as their own batch, one adapter after another
    one adapter  the same 16 prompts all on adapter 0, in one batch (the cost of one adapter, for reference)

The three are timed in `--repeats` rounds, their order rotated each round, after the adapters are loaded and
`--warmup` untimed runs of each (`kvmesh.evals.timing`). `ratio_vs_sequential` = sequential time / mixed time
(equal work); `ratio_vs_one_adapter` = mixed throughput / one-adapter throughput (equal tokens); both are taken
within each round, and every time and ratio is the median with the min and max over the rounds. `identical`:
every mixed row's tokens equal that row run with its adapter alone (the sequential run).

    python benchmarks/adapters.py [--model smollm2-135m] [--max-new-tokens 32] [--repeats 3] [--json]

A mixed batch runs a few small matrix products per adapter and LoRA layer; on a machine whose cores another
process is using, several OpenMP threads make those far slower (set OMP_NUM_THREADS=1 there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import QUESTIONS, add_timing_arguments, emit, shown, spread

from kvmesh import load_model
from kvmesh.evals.timing import time_modes
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


def batches(lm, requests: list[list[GenerationRequest]]) -> list:
    """Each group of rows as its own batch, one group after another; the generations in order."""
    return [generation for group in requests for generation in lm.generate_requests(group)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="*", default=None, help="LoRA target modules (default: peft's)")
    add_timing_arguments(parser)
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

        lm.generate_requests(mixed_rows[:ADAPTERS])  # loads the adapters
        timings = time_modes(
            {
                "mixed": lambda: batches(lm, [mixed_rows]),
                "sequential": lambda: batches(lm, sequential_rows),
                "one_adapter": lambda: batches(lm, [one_rows]),
            },
            args.repeats,
            args.warmup,
        )
        mixed, sequential, one = (timings.outputs[m] for m in ("mixed", "sequential", "one_adapter"))
        alone = dict(zip([i for group in by_adapter for i in group], sequential, strict=True))
        same = sum(mixed[i].token_ids == alone[i].token_ids for i in range(args.rows))
        others = [i for i in range(args.rows) if i % ADAPTERS != 0]  # same prompt, another adapter than in `one`
        changed = sum(mixed[i].token_ids != one[i].token_ids for i in others)

    vs_sequential, vs_one = timings.ratios("sequential", "mixed"), timings.ratios("one_adapter", "mixed")
    result = {
        "benchmark": "adapters",
        "model": args.model,
        "rows": args.rows,
        "adapters": ADAPTERS,
        "rank": args.rank,
        "targets": args.targets or "peft default",
        "max_new_tokens": tokens,
        "repeats": args.repeats,
        "mixed_s": spread(timings.seconds("mixed")),
        "sequential_s": spread(timings.seconds("sequential")),
        "one_adapter_s": spread(timings.seconds("one_adapter")),
        "ratio_vs_sequential": spread(vs_sequential, 2),
        "ratio_vs_one_adapter": spread(vs_one, 2),  # equal tokens: throughput(mixed) / throughput(one)
        "identical": same == args.rows,
        "identical_rows": f"{same}/{args.rows}",
        "adapter_changes_output": f"{changed}/{len(others)}",  # rows whose text differs from adapter 0's
    }
    emit(
        result,
        args.json,
        [
            f"{args.rows} rows over {ADAPTERS} LoRA adapters (rank {args.rank}) on {args.model}, {tokens} tokens each; "
            f"median (min-max) of {args.repeats} rounds",
            f"mixed       (1 batch, {ADAPTERS} adapters):      {shown(timings.seconds('mixed'), unit=' s')}",
            f"sequential  ({ADAPTERS} batches, adapter by adapter): {shown(timings.seconds('sequential'), unit=' s')}",
            f"one adapter (1 batch, 1 adapter):      {shown(timings.seconds('one_adapter'), unit=' s')}",
            f"mixed vs sequential: {shown(vs_sequential, unit='x')}   "
            f"mixed vs one adapter: {shown(vs_one, unit='x')} of its throughput (per round)",
            f"identical to each adapter alone: {same}/{args.rows}   differ from adapter 0: {changed}/{len(others)}",
        ],
    )


if __name__ == "__main__":
    main()
