"""The pieces of `kvmesh serve`'s answers in OpenAI's shapes: stream chunks, log-probabilities, server-sent events."""

from __future__ import annotations

import json

from kvmesh.llm.base import Generation


def chunk_choice(kind: str, text: str, first: bool) -> dict:
    """A streamed chunk's choice: chat deltas name the role in the first chunk only, as OpenAI's do."""
    if kind != "chat":
        return {"text": text}
    return {"delta": {"role": "assistant", "content": text} if first else {"content": text}}


def choice_logprobs(model, generation: Generation, kind: str) -> dict:
    """The chosen tokens' log-probabilities in the endpoint's shape: chat `{"content": [{token, logprob, bytes,
    top_logprobs}]}`, completions `{tokens, token_logprobs, top_logprobs, text_offset}` (no alternatives)."""
    tokens = [model.tokenizer.decode([token]) for token in generation.token_ids]
    values = generation.logprobs or []
    if kind == "chat":
        return {
            "content": [
                {"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": []}
                for token, value in zip(tokens, values, strict=True)
            ]
        }
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": None, "text_offset": offsets}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"
