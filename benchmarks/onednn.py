"""oneDNN against the default BLAS for fp32 linear layers on CPU: prefill throughput and decode-step time.

Both paths run the same model weights in one process; ratios are default time over oneDNN time.

    python benchmarks/onednn.py [--model smollm2-135m] [--prompt-tokens 300] [--batch 16] [--json]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit

from kvmesh import load_model
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    paths = {"default": load_model(args.model, onednn=False).model, "onednn": load_model(args.model, onednn=True).model}
    result = {"benchmark": "onednn", "model": args.model, "prompt_tokens": args.prompt_tokens}
    lines = [f"{args.model}, prompts of {args.prompt_tokens} tokens"]
    for batch in (1, args.batch):
        for model in paths.values():
            measure(model, batch, 32, steps=2)  # warm-up
        (pre_d, dec_d), (pre_o, dec_o) = (measure(m, batch, args.prompt_tokens) for m in paths.values())
        result[f"batch_{batch}"] = {
            "prefill_tokens_per_s": {
                "default": round(batch * args.prompt_tokens / pre_d),
                "onednn": round(batch * args.prompt_tokens / pre_o),
            },
            "decode_step_ms": {"default": round(dec_d * 1e3, 2), "onednn": round(dec_o * 1e3, 2)},
            "prefill_ratio": round(pre_d / pre_o, 2),
            "decode_ratio": round(dec_d / dec_o, 2),
        }
        lines.append(
            f"batch {batch:>2}: prefill {pre_d / pre_o:.2f}x faster, decode step {dec_d * 1e3:.1f} -> "
            f"{dec_o * 1e3:.1f} ms ({dec_d / dec_o:.2f}x)"
        )
    emit(result, args.json, lines)


if __name__ == "__main__":
    main()
