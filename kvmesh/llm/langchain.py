"""ChatLocalLM: a langchain-core chat model over a kvmesh model (`LocalLM`, or a served model's client), so kvmesh
models drop into LangChain code.

Unlike `ChatHuggingFace` it accepts a transcript whose last message is another agent's `AIMessage` (the reply
opens a new assistant turn; a named AI message from another speaker is shown as "name: text" so the model can
tell agents apart) and it reports real token usage in `usage_metadata`. `batch` runs all inputs in one batched
model call instead of one thread per input. `max_tokens`, `temperature`, `seed` and `stop` can be set per call
(`invoke(..., max_tokens=32)` or `bind(...)`); `max_new_tokens` is accepted as an alias of `max_tokens`.

    chat = ChatLocalLM(model="smollm2-135m", max_tokens=64)
    reply = chat.invoke([HumanMessage("Hi"), AIMessage("Hello!", name="bob")])
    reply.usage_metadata  # {'input_tokens': ..., 'output_tokens': ..., 'total_tokens': ..., ...}
    chat.get_num_tokens_from_messages([HumanMessage("Hi")])  # the rendered prompt's real token count

Caveats:
- Text only: message content may be a string or a list of text content blocks (joined without a separator,
  as `BaseMessage.text` does); image, audio, file, tool or reasoning blocks are refused with a `ValueError`.
- Unknown constructor arguments are refused (a `pydantic.ValidationError` naming the valid fields), and so are
  LangChain's remote-API settings (`timeout`, `max_retries`, `api_key`): they mean nothing for an in-process
  model, and silently ignoring them would hide a misconfiguration.
- Token counts use the wrapped model's own tokenizer, never LangChain's GPT-2 fallback (which downloads), so they
  work offline; `get_num_tokens_from_messages` ignores `tools` because this model is never shown any.
- Streaming (`stream`, `astream`) yields the reply's text as the engine decodes it, stripped at both ends as
  `invoke`'s is, and a last empty chunk with the usage; each call decodes on a running batch of its own.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, model_validator

from kvmesh.llm.base import Generation, GenerationRequest, stream_request
from kvmesh.llm.local import load_model
from kvmesh.llm.tokenized import TokenizedModel

_ALIASES = {"max_new_tokens": "max_tokens"}  # kvmesh's own name -> LangChain's standard name
_CALL_KWARGS = ("max_tokens", "max_new_tokens", "temperature", "seed")


def _resolve_aliases(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Rename aliases to their standard names; an alias and its name set to different values is an error."""
    values = dict(values)
    for alias, name in _ALIASES.items():
        if alias in values:
            value = values.pop(alias)
            if name in values and values[name] != value:
                raise ValueError(
                    f"{where}: {alias}={value!r} and {name}={values[name]!r} disagree; "
                    f"{alias} is an alias of {name}, set only one"
                )
            values[name] = value
    return values


def _message_text(message: BaseMessage) -> str:
    """The text of a message whose content is a string or a list of text content blocks."""
    if isinstance(message.content, str):
        return message.content
    parts: list[str] = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"ChatLocalLM only supports text content; a {message.type} message has a content block of type "
                f'{kind!r} (use a string or {{"type": "text", "text": ...}} blocks)'
            )
    return "".join(parts)  # the same joining as BaseMessage.text


class ChatLocalLM(BaseChatModel):
    """LangChain chat model backed by an in-process kvmesh model.

    Args:
        model: a `LocalLM` (or another kvmesh model: `openai:` server specs give `OpenAIModel`) or a spec for
            `kvmesh.load_model` (alias, folder, Hugging Face id or `openai:http://HOST:PORT/v1#MODEL`).
        max_tokens: cap on generated tokens per reply (alias: `max_new_tokens`).
        temperature: 0 for greedy decoding.
        seed: seeds sampling when temperature > 0.
        stop: default stop strings; a per-call `stop` replaces them.
        name_replies: the `name` put on returned `AIMessage`s.
        streaming: route `invoke` through the streaming path, for streaming callbacks.
    """

    # forbid: a misspelt or unsupported setting must fail loudly, not be dropped (see _check_arguments)
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any = Field(default="smollm2-135m")
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    seed: int | None = None
    stop: list[str] | None = None
    name_replies: str | None = None
    # LangChain's standard switch: `invoke` then goes through `_stream`, so streaming callbacks see the reply
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _check_arguments(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = _resolve_aliases(values, "ChatLocalLM")
        fields = cls.model_fields
        known = set(fields) | {f.alias for f in fields.values() if f.alias}
        unknown = sorted(set(values) - known)
        if unknown:
            ours = [name for name in fields if name not in BaseChatModel.model_fields]
            raise ValueError(
                f"ChatLocalLM does not take {unknown}; it takes {', '.join(ours)} (max_new_tokens is an alias of "
                f"max_tokens) and LangChain's {', '.join(sorted(BaseChatModel.model_fields))}"
            )
        return values

    @property
    def max_new_tokens(self) -> int:
        """Alias of `max_tokens`, kvmesh's name for it elsewhere."""
        return self.max_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        self.max_tokens = value

    @property
    def _llm_type(self) -> str:
        return "kvmesh-local"

    @property
    def _spec(self) -> str:
        # the name without loading the model: tracing and cache keys must not trigger a load
        return self.model.spec if isinstance(self.model, TokenizedModel) else str(self.model)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self._spec,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        settings = _resolve_aliases({k: v for k, v in kwargs.items() if k in _CALL_KWARGS}, "ChatLocalLM call")
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="kvmesh",
            ls_model_name=model if isinstance(model, str) else self._spec,
            ls_model_type="chat",
            ls_temperature=settings.get("temperature", self.temperature),
            ls_max_tokens=settings.get("max_tokens", self.max_tokens),
        )
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    @property
    def lm(self) -> TokenizedModel:
        if not isinstance(self.model, TokenizedModel):
            self.model = load_model(self.model)
        return self.model

    # --- token counting: the model's own tokenizer, never LangChain's GPT-2 fallback --------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Ids of the tokens of `text` in order, as the model reads them: no BOS/EOS added (LangChain's contract:
        the tokens *in* the text); special tokens written in the text, such as chat markup, count as one each."""
        if self.custom_get_token_ids is not None:  # an explicit user choice still wins, as in BaseLanguageModel
            return self.custom_get_token_ids(text)
        return self.lm.encode_prompt(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the prompt the model would read for these messages: the chat template's rendering, with the
        generation prompt, as `invoke` reports in `usage_metadata["input_tokens"]`."""
        if tools is not None:
            warnings.warn("ChatLocalLM does not use tools; they are not in the prompt and not counted", stacklevel=2)
        return len(self.lm.encode_transcript([self._prepare(m) for m in messages])[1])

    # --- generation --------------------------------------------------------------------------------------------

    def _to_message(self, generation: Generation) -> AIMessage:
        return AIMessage(
            content=generation.text.strip(),
            name=self.name_replies,
            usage_metadata={
                "input_tokens": generation.prompt_tokens,
                "output_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
                "input_token_details": {}
                if generation.cached_tokens is None
                else {"cache_read": generation.cached_tokens},
            },
            response_metadata={
                "model_name": self.lm.spec,
                "finish_reason": generation.finish_reason,
                "ttft_s": generation.ttft_s,
                "latency_s": generation.latency_s,
            },
        )

    def _prepare(self, message: BaseMessage) -> BaseMessage:
        """The message with plain-text content, another speaker's AI reply prefixed with its name."""
        text = _message_text(message)
        if isinstance(message, AIMessage) and message.name and message.name != self.name_replies:
            return AIMessage(content=f"{message.name}: {text}")
        return message if text is message.content else message.model_copy(update={"content": text})

    def _requests(
        self, transcripts: Sequence[Sequence[BaseMessage]], stop: list[str] | None, **kwargs: Any
    ) -> tuple[list[GenerationRequest], int | None]:
        """The rows of these transcripts under this model's settings and the call's, and the sampling seed."""
        unknown = set(kwargs) - set(_CALL_KWARGS)
        if unknown:
            raise TypeError(
                f"ChatLocalLM does not take {sorted(unknown)}; it takes max_tokens (alias max_new_tokens), "
                "temperature, seed, stop"
            )
        settings = _resolve_aliases(kwargs, "ChatLocalLM call")
        requests = self.lm.requests(
            [[self._prepare(m) for m in t] for t in transcripts],
            max_new_tokens=settings.get("max_tokens", self.max_tokens),
            temperature=settings.get("temperature", self.temperature),
            stop=stop if stop is not None else self.stop,
        )
        return requests, settings.get("seed", self.seed)

    def _run(
        self, transcripts: Sequence[Sequence[BaseMessage]], stop: list[str] | None, **kwargs: Any
    ) -> list[AIMessage]:
        requests, seed = self._requests(transcripts, stop, **kwargs)
        return [self._to_message(g) for g in self.lm.generate_requests(requests, seed=seed)]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = self._run([messages], stop, **kwargs)[0]
        info = {"finish_reason": message.response_metadata["finish_reason"]}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """One chunk per piece of text as the model decodes it, then a last chunk with no text that carries the
        usage and finish reason (`chunk_position="last"`); the chunks add up to `invoke`'s message."""
        (request,), seed = self._requests([messages], stop, **kwargs)
        leading = True  # `invoke` strips the reply: so do the chunks, at both ends
        held = ""  # whitespace that only counts if more text follows
        for item in stream_request(self.lm, request, seed):
            if isinstance(item, str):
                text = held + (item.lstrip() if leading else item)
                leading = leading and not text
                body = text.rstrip()
                held = text[len(body) :]
                if body:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=body, name=self.name_replies))
                    if run_manager:
                        run_manager.on_llm_new_token(body, chunk=chunk)
                    yield chunk
                continue
            final = self._to_message(item)
            last = AIMessageChunk(
                content="",
                name=self.name_replies,
                usage_metadata=final.usage_metadata,
                response_metadata=final.response_metadata,
                chunk_position="last",
            )
            chunk = ChatGenerationChunk(message=last, generation_info={"finish_reason": item.finish_reason})
            if run_manager:
                run_manager.on_llm_new_token("", chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """`_stream` on a worker thread, one chunk at a time, so the event loop runs while the model decodes."""
        chunks = self._stream(messages, stop, None, **kwargs)
        loop = asyncio.get_running_loop()
        while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """All inputs in one batched model call (callbacks are not invoked on this path)."""
        if not inputs:
            return []
        transcripts = [self._convert_input(i).to_messages() for i in inputs]
        stop = kwargs.pop("stop", None)
        try:
            return self._run(transcripts, stop, **kwargs)
        except Exception as error:
            if return_exceptions:  # one batched call: a failure is every input's failure
                return [error] * len(inputs)
            raise
