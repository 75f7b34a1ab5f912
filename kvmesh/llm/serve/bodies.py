"""The request bodies `kvmesh serve` accepts, validated before any work: what it cannot do is refused by name.

Accepted as OpenAI and vLLM define them: `model`, `max_tokens` / `max_completion_tokens`, `temperature` (0..2),
`top_p` (0..1), `stop`, `stream` (a JSON boolean), `stream_options`, `seed` (the row's own sampler: its reply
does not depend on what it is batched with), `min_tokens` (at most the reply cap), `return_token_ids`, `n` = 1,
`logprobs` (the chosen tokens' own: completions `logprobs: 0`, chat `logprobs: true` with no `top_logprobs`),
`echo` (completions: the prompt's text before the reply; not with `logprobs`), `user` (ignored, as it is
metadata). Penalties and `logit_bias` are accepted at their neutral values. Anything else (`tools`,
`response_format`, `best_of`, `suffix`, ...) is refused with a 400 that names the field, instead of being
silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

IGNORED = frozenset({"user"})  # metadata a server may ignore without changing a reply
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "best_of": 1}


class UnsupportedField(ValueError):
    """A request field kvmesh serve does not implement (the field is `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class SamplingBody(BaseModel):
    """What both endpoints take besides the prompt."""

    model_config = ConfigDict(extra="allow")  # kept, to be refused by name (`unsupported`)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: dict | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    min_tokens: int = Field(default=0, ge=0)
    return_token_ids: StrictBool = False
    n: int = Field(default=1, ge=1, le=1)

    @property
    def asked_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @model_validator(mode="after")
    def _min_within_max(self):
        asked = self.asked_tokens
        if asked is not None and self.min_tokens > asked:
            raise ValueError(f"min_tokens ({self.min_tokens}) is more than max_tokens ({asked}); lower min_tokens")
        return self

    def unsupported(self) -> None:
        """Raise `UnsupportedField` for the first field this server does not implement."""
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED or (name in NEUTRAL and value in (NEUTRAL[name], None)):
                continue
            neutral = f" (only {NEUTRAL[name]!r} is accepted)" if name in NEUTRAL else ""
            raise UnsupportedField(name, f"{name!r} is not supported by kvmesh serve{neutral}; remove it")

    def wants_logprobs(self) -> bool:
        raise NotImplementedError


class CompletionBody(SamplingBody):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0)
    echo: StrictBool = False

    def wants_logprobs(self) -> bool:
        if self.logprobs not in (None, 0):
            raise UnsupportedField(
                "logprobs", "only the chosen tokens' log-probabilities are returned: send logprobs 0 (no alternatives)"
            )
        if self.logprobs is not None and self.echo:
            raise UnsupportedField("echo", "echo with logprobs would need the prompt's log-probabilities; drop one")
        return self.logprobs is not None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatBody(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(default=None, ge=0)

    def wants_logprobs(self) -> bool:
        if self.top_logprobs:
            raise UnsupportedField("top_logprobs", "only the chosen tokens' log-probabilities are returned")
        return self.logprobs
