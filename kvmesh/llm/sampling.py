"""Choosing each row's next token from its logits: greedy at temperature 0, sampled above it (nucleus `top_p`).

Sampling draws on the CPU from one `torch.Generator` per running batch, so a seeded batch draws the same tokens
on every device; greedy rows never touch the generator. A row with a seed of its own draws from its own generator
instead, so its reply does not depend on what it is batched with (a server's per-request `seed`).

Numerics: logits are shifted so each row's largest is 0 before dividing by the temperature, so no accepted
temperature overflows (a tiny one makes the row one-hot on its best tokens, not inf/inf = NaN). Rows whose logits
are not numbers at all (NaN, +inf, or every token -inf) cannot be sampled or argmaxed honestly: `unusable_rows`
names them so the engine fails those rows alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def unusable_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows of `logits` (B, V) with a NaN or +inf, or with no finite value (nothing to choose)."""
    return logits.isnan().any(-1) | logits.isposinf().any(-1) | ~logits.isfinite().any(-1)


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`probs` (R, V) restricted to each row's smallest most-likely set whose mass reaches `top_p` (R,); the most
    likely token always stays (top_p 0 is greedy), then renormalised."""
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(-1) - ordered  # mass of the tokens ranked above each one
    ordered = ordered.masked_fill(before >= top_p[:, None], 0.0)
    ordered[:, 0] = ordered[:, 0].clamp_min(torch.finfo(ordered.dtype).tiny)
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum(-1, keepdim=True)


def choose_tokens(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    generator: torch.Generator | None,
    top_p: torch.Tensor | None = None,
    own: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Pick the next token per row. logits: (B, V) of usable rows (see `unusable_rows`); temperatures: (B,);
    top_p: (B,) nucleus mass per row (None: 1, the whole distribution); own: per row, its own generator (a seeded
    row draws from it alone) or None (it draws from the batch's `generator`, with the others). Returns (B,) long."""
    tokens = logits.argmax(dim=-1)
    sampled = temperatures > 0
    if bool(sampled.any()):
        chosen = logits[sampled].float()
        shifted = chosen - chosen.max(dim=-1, keepdim=True).values  # each row's best at 0: no overflow below
        probs = torch.softmax(shifted / temperatures[sampled, None].float(), dim=-1)
        if top_p is not None and bool((top_p[sampled] < 1).any()):
            probs = _nucleus(probs, top_p[sampled].float())
        probs, rows = probs.cpu(), sampled.nonzero().squeeze(-1).tolist()
        seeded = [i for i, row in enumerate(rows) if own is not None and own[row] is not None]
        own_rows = set(seeded)
        shared = [i for i in range(len(rows)) if i not in own_rows]
        draws = torch.empty(len(rows), dtype=torch.long)
        if shared:
            draws[shared] = torch.multinomial(probs[shared], 1, generator=generator).squeeze(-1)
        for i in seeded:
            draws[i] = torch.multinomial(probs[i], 1, generator=own[rows[i]]).squeeze(-1)
        tokens[sampled] = draws.to(tokens.device)
    return tokens


def chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) log-probability of each row's chosen token under the model's own distribution (temperature 1, no
    nucleus), as OpenAI's `logprobs` reports it. logits: (B, V); tokens: (B,)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
