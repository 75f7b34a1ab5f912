"""One batched generate call: left-padded prefill, then a decode loop over a shared KV cache.

Why our own loop rather than `model.generate`: we need per-row limits (each agent has its own max_new_tokens,
temperature and stop strings), time to first token, exact token ids per row, and rows that finish early leave
the batch (their cache rows are dropped) so the remaining rows decode faster.

Left padding is exact: position ids count only real tokens and the attention mask hides the pads, so a row's
greedy output does not depend on what it was batched with (up to float rounding in the matmuls; tests check
equality on real prompts).

Shapes: B = rows still decoding, T = padded prompt length, S = prompt + generated so far.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class GenerationRequest:
    """One row of a batched call.

    Args:
        prompt_ids: token ids of the full prompt, exactly as the model reads them.
        max_new_tokens: upper bound on generated tokens for this row.
        temperature: 0 is greedy; above 0 samples from softmax(logits / temperature).
        stop: strings that end generation; the text is cut before the first one found.
    """

    prompt_ids: list[int]
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a generation request needs a non-empty prompt")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Generation:
    """The result of one row.

    `token_ids` are every token the model generated for this row, including a final end-of-sequence token or
    the tokens that completed a stop string; `text` is their decoded text with special tokens removed and cut
    before any stop string. `completion_tokens == len(token_ids)`.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "eos", "stop" or "length"
    ttft_s: float  # seconds from the call's start to this row's first token (shared by the whole batch)
    latency_s: float  # seconds from the call's start to this row's last token

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class _Row:
    request: GenerationRequest
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None
    latency_s: float = 0.0


def _left_pad(rows: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _choose(logits: torch.Tensor, temperatures: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token per row. logits: (B, V) float; temperatures: (B,). Returns (B,) long."""
    greedy = logits.argmax(dim=-1)
    sampled_rows = temperatures > 0
    if not bool(sampled_rows.any()):
        return greedy
    scaled = logits[sampled_rows].float() / temperatures[sampled_rows, None]
    probs = torch.softmax(scaled, dim=-1)
    draws = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(greedy.device)
    greedy[sampled_rows] = draws
    return greedy


class BatchDecoder:
    """Runs batched generation for one model and tokenizer. Stateless between calls."""

    def __init__(self, model, tokenizer, eos_ids: set[int], pad_id: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id

    def _stop_hit(self, row: _Row) -> bool:
        """Check the tail of the generated text for a stop string; cut the text there if found."""
        stops = row.request.stop
        if not stops:
            return False
        window = max(len(s) for s in stops) + 2  # a stop string of c chars spans at most c tokens
        tail = self.tokenizer.decode(row.generated[-window:], skip_special_tokens=True)
        if not any(s in tail for s in stops):
            return False
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut < 0:  # the stop string straddles the window edge only in the tail decode
            return False
        row.text = text[:cut]
        return True

    @torch.inference_mode()
    def __call__(self, requests: Sequence[GenerationRequest], seed: int | None = None) -> list[Generation]:
        start = time.perf_counter()
        device = self.model.device
        rows = [_Row(request) for request in requests]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None

        input_ids, attention_mask = _left_pad([r.prompt_ids for r in requests], self.pad_id, device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        temperatures = torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device)
        cache = DynamicCache(config=self.model.config)
        active = list(range(len(rows)))  # indices into `rows` of the rows still in the batch, in batch order

        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        next_positions = position_ids[:, -1:] + 1
        ttft = None

        while True:
            tokens = _choose(logits, temperatures, generator)
            now = time.perf_counter() - start
            ttft = now if ttft is None else ttft
            keep: list[int] = []
            for batch_index, token in enumerate(tokens.tolist()):
                row = rows[active[batch_index]]
                row.generated.append(token)
                row.latency_s = now
                if token in self.eos_ids:
                    row.finish_reason = "eos"
                elif self._stop_hit(row):
                    row.finish_reason = "stop"
                elif len(row.generated) >= row.request.max_new_tokens:
                    row.finish_reason = "length"
                else:
                    keep.append(batch_index)
            if not keep:
                break
            if len(keep) < len(active):  # drop finished rows from every batched tensor and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                tokens, attention_mask = tokens[index], attention_mask[index]
                next_positions, temperatures = next_positions[index], temperatures[index]
                active = [active[i] for i in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            next_positions = next_positions + 1

        return [
            Generation(
                text=row.text
                if row.text is not None
                else self.tokenizer.decode(row.generated, skip_special_tokens=True),
                token_ids=row.generated,
                prompt_tokens=len(row.request.prompt_ids),
                finish_reason=row.finish_reason or "length",
                ttft_s=ttft or 0.0,
                latency_s=row.latency_s,
            )
            for row in rows
        ]
