"""Choosing each row's next token from its logits: greedy at temperature 0, sampled above it.

Sampling draws on the CPU from one `torch.Generator` per running batch, so a seeded batch draws the same tokens
on every device; greedy rows never touch the generator.
"""

from __future__ import annotations

import torch


def choose_tokens(logits: torch.Tensor, temperatures: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token per row. logits: (B, V); temperatures: (B,). Returns (B,) long."""
    tokens = logits.argmax(dim=-1)
    sampled = temperatures > 0
    if bool(sampled.any()):
        probs = torch.softmax(logits[sampled].float() / temperatures[sampled, None], dim=-1)
        draws = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1)
        tokens[sampled] = draws.to(tokens.device)
    return tokens
