"""oneDNN against the default BLAS for fp32 linear layers on CPU: prefill throughput and decode-step time.

Both paths run the same model weights in one process, timed in `--repeats` rounds after `--warmup` short untimed
runs of each, the paths' order alternating each round (`kvmesh.evals.timing`). Ratios are default time over
oneDNN time within each round; every figure is the median with the min and max over the rounds.

    python benchmarks/onednn.py [--model smollm2-135m] [--prompt-tokens 300] [--batch 16] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_timing_arguments, emit, shown, spread

from kvmesh import load_model
from kvmesh.evals.timing import time_modes
from kvmesh.llm.cache import cache_argument, new_cache


@torch.inference_mode()
def measure(model, batch: int, prompt_tokens: int, steps: int = 8) -> tuple[float, float]:
    """Seconds for one prefill of (batch, prompt_tokens) and for one decode step after it."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (batch, prompt_tokens), generator=generator)
    cache = new_cache(model.config)
    start = time.perf_counter()
    model(input_ids=ids, logits_to_keep=1, **cache_argument(model, cache))
    prefill = time.perf_counter() - start
    token = ids[:, -1:]
    start = time.perf_counter()
    for step in range(steps):
        mask = torch.ones(batch, prompt_tokens + 1 + step, dtype=torch.long)
        positions = torch.full((batch, 1), prompt_tokens + step)
        model(
            input_ids=token,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=1,
            **cache_argument(model, cache),
        )
    return prefill, (time.perf_counter() - start) / steps


def rounds(paths: dict, batch: int, prompt_tokens: int, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Each path's prefill and decode-step seconds in each of `repeats` rounds (after `warmup` short runs each)."""
    prefill: dict[str, list[float]] = {name: [] for name in paths}
    decode: dict[str, list[float]] = {name: [] for name in paths}

    def keep(_, outputs: dict[str, tuple[float, float]]) -> None:
        for name, (pre, dec) in outputs.items():
            prefill[name].append(pre)
            decode[name].append(dec)

    time_modes(
        {name: lambda m=model: measure(m, batch, prompt_tokens) for name, model in paths.items()},
        repeats,
        warmup,
        warm={name: lambda m=model: measure(m, batch, 32, steps=2) for name, model in paths.items()},
        on_round=keep,
    )
    return prefill, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    add_timing_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    paths = {"default": load_model(args.model, onednn=False).model, "onednn": load_model(args.model, onednn=True).model}
    result = {"benchmark": "onednn", "model": args.model, "prompt_tokens": args.prompt_tokens, "repeats": args.repeats}
    lines = [f"{args.model}, prompts of {args.prompt_tokens} tokens; median (min-max) of {args.repeats} rounds"]
    for batch in (1, args.batch):
        prefill, decode = rounds(paths, batch, args.prompt_tokens, args.repeats, args.warmup)
        tokens = batch * args.prompt_tokens
        prefill_ratio = [d / o for d, o in zip(prefill["default"], prefill["onednn"], strict=True)]
        decode_ratio = [d / o for d, o in zip(decode["default"], decode["onednn"], strict=True)]
        decode_ms = {name: [s * 1e3 for s in decode[name]] for name in paths}
        result[f"batch_{batch}"] = {
            "prefill_tokens_per_s": {name: spread([tokens / s for s in prefill[name]], 0) for name in paths},
            "decode_step_ms": {name: spread(decode_ms[name], 2) for name in paths},
            "prefill_ratio": spread(prefill_ratio, 2),
            "decode_ratio": spread(decode_ratio, 2),
        }
        lines.append(
            f"batch {batch:>2}: prefill {shown(prefill_ratio, unit='x')} faster, decode step "
            f"{shown(decode_ms['default'], 1)} -> {shown(decode_ms['onednn'], 1)} ms ({shown(decode_ratio, unit='x')})"
        )
    emit(result, args.json, lines)


if __name__ == "__main__":
    main()
