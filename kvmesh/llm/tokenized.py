"""What every backend with a local tokenizer shares: exact prompt text, token ids, and batched generation.

`TokenizedModel` holds a model's tokenizer and chat format and implements the text side of the `LanguageModel`
protocol with them (rendering, encoding with character spans, decoding, counting), so every count in kvmesh is
the model's own. `generate` runs prompts through the backend's running batch (`new_batch`, which a subclass
provides: the in-process engine, or a client of a server).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from kvmesh.llm.base import Generation, GenerationRequest, RunningBatch, normalize_stop, run_requests
from kvmesh.llm.chat import ChatFormat, to_turns


class TokenizedModel:
    """The text side of a `LanguageModel` over a Hugging Face tokenizer; subclasses add `new_batch`.

    Args:
        tokenizer: the model's tokenizer (its chat template renders prompts).
        spec: the name the model was loaded under.
    """

    def __init__(self, tokenizer, spec: str) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.chat = ChatFormat.for_tokenizer(tokenizer)
        self._control = set(tokenizer.added_tokens_decoder)  # ids a tokenizer matches in text before its vocabulary

    @property
    def name(self) -> str:
        return self.spec

    def new_batch(self, seed: int | None = None) -> RunningBatch:
        raise NotImplementedError

    # --- text <-> tokens -------------------------------------------------------------------------------------

    def render(self, messages: Sequence) -> str:
        """The exact prompt text for a transcript, ready for a new assistant turn."""
        return self.chat.render(messages, add_generation_prompt=True)

    def encode_transcript(self, messages: Sequence) -> tuple[str, list[int]]:
        """A transcript's exact prompt text and its ids, every message's content read as text: a control token
        it spells (`<|im_end|>`) stays text, and only the template's own markup is markup."""
        text, data, at = self.render(messages), [], 0
        for turn in to_turns(messages):
            start = text.find(turn["content"], at) if turn["content"] else -1
            if start >= 0:  # contents appear in order, also when a strict template merged turns
                data.append((start, start + len(turn["content"])))
                at = start + len(turn["content"])
        return text, self.encode_with_spans(text, data)[0]

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; its special tokens (BOS included) are written in the text itself."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` in this model's tokenizer (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_with_spans(
        self, text: str, literal: Sequence[tuple[int, int]] = ()
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode_prompt(text)` and the character span of each token, from one tokenizer call.

        `literal`: character ranges that are data. A control token found inside one (a task that spells
        `<|im_end|>`) means the text is encoded again range by range, with the data ranges' control tokens
        split into plain text; prompts without any keep the ids of one tokenizer call."""
        ids, spans = self._encode(text)
        if not literal or not any(
            self._inside(span, literal) for token, span in zip(ids, spans, strict=True) if token in self._control
        ):
            return ids, spans
        ids, spans, cuts = [], [], sorted({0, len(text), *(i for span in literal for i in span)})
        for lo, hi in pairwise(cuts):
            part_ids, part_spans = self._encode(text[lo:hi], split_special=self._inside((lo, hi), literal))
            ids += part_ids
            spans += [(lo + a, lo + b) for a, b in part_spans]
        return ids, spans

    def _encode(self, text: str, split_special: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=split_special
        )
        return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]

    @staticmethod
    def _inside(span: tuple[int, int], ranges: Sequence[tuple[int, int]]) -> bool:
        return any(lo <= span[0] and span[1] <= hi for lo, hi in ranges)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text `token_ids` stand for, special tokens included (the inverse of `encode_prompt`)."""
        return self.tokenizer.decode(token_ids)

    # --- model calls -----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str | Sequence],
        max_new_tokens: int | Sequence[int] = 256,
        temperature: float | Sequence[float] = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Generation]:
        """Generate for several prompts in one batched call.

        Args:
            prompts: rendered prompt strings (read as written, control tokens included), or transcripts (lists of
                messages) to render first, whose contents are read as text (`encode_transcript`).
            max_new_tokens, temperature: one value for all rows or one per row.
            stop: stop strings for every row (the plain chat layout adds its own).
            seed: seeds sampling; greedy rows ignore it.
        """
        return self.generate_requests(self.requests(prompts, max_new_tokens, temperature, stop), seed=seed)

    def requests(
        self,
        prompts: Sequence[str | Sequence],
        max_new_tokens: int | Sequence[int] = 256,
        temperature: float | Sequence[float] = 0.0,
        stop: Sequence[str] | None = None,
    ) -> list[GenerationRequest]:
        """The rows `generate` runs for these arguments (to submit to a running batch yourself, to stream)."""
        if isinstance(prompts, str) or (prompts and not isinstance(prompts[0], str | list | tuple)):
            raise TypeError(
                "prompts must be a list of prompt strings or of transcripts, e.g. generate([text]) or "
                "generate([[message, ...]]); got a single prompt or a bare transcript"
            )
        encoded = [(p, self.encode_prompt(p)) if isinstance(p, str) else self.encode_transcript(p) for p in prompts]
        count = len(encoded)
        limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
        temps = [float(temperature)] * count if isinstance(temperature, int | float) else list(temperature)
        if len(limits) != count or len(temps) != count:
            raise ValueError("max_new_tokens and temperature need one value per prompt, or a single value")
        if any(limit < 1 for limit in limits):  # prefill-only rows are for caches: GenerationRequest(..., 0)
            raise ValueError(f"max_new_tokens must be >= 1, got {min(limits)}")
        stops = normalize_stop(stop) + self.chat.stop
        return [
            GenerationRequest(ids, limit, temp, stops)
            for (_, ids), limit, temp in zip(encoded, limits, temps, strict=True)
        ]

    def generate_requests(self, requests: Sequence[GenerationRequest], seed: int | None = None) -> list[Generation]:
        """Run prepared requests to completion; at most `max_batch_size` rows decode at once, and a waiting
        row takes the slot of the first row to finish."""
        return run_requests(self, requests, seed)
