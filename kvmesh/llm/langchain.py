"""ChatLocalLM: a langchain-core chat model over a kvmesh `LocalLM`, so kvmesh models drop into LangChain code.

Unlike `ChatHuggingFace` it accepts a transcript whose last message is another agent's `AIMessage` (the reply
opens a new assistant turn; a named AI message from another speaker is shown as "name: text" so the model can
tell agents apart) and it reports real token usage in `usage_metadata`. `batch` runs all inputs in one batched
model call instead of one thread per input. `max_new_tokens`, `temperature` and `stop` can be set per call
(`invoke(..., max_new_tokens=32)` or `bind(...)`).

    chat = ChatLocalLM(model="smollm2-135m", max_new_tokens=64)
    reply = chat.invoke([HumanMessage("Hi"), AIMessage("Hello!", name="bob")])
    reply.usage_metadata  # {'input_tokens': ..., 'output_tokens': ..., 'total_tokens': ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field

from kvmesh.llm.base import Generation
from kvmesh.llm.local import LocalLM, load_model


class ChatLocalLM(BaseChatModel):
    """LangChain chat model backed by an in-process kvmesh model.

    Args:
        model: a `LocalLM` or a spec for `kvmesh.load_model` (alias, folder or Hugging Face id).
        max_new_tokens: cap on generated tokens per reply.
        temperature: 0 for greedy decoding.
        seed: seeds sampling when temperature > 0.
        name_replies: the `name` put on returned `AIMessage`s.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(default="smollm2-135m")
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    name_replies: str | None = None

    @property
    def _llm_type(self) -> str:
        return "kvmesh-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.lm.spec, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    @property
    def lm(self) -> LocalLM:
        if not isinstance(self.model, LocalLM):
            self.model = load_model(self.model)
        return self.model

    def _to_message(self, generation: Generation) -> AIMessage:
        return AIMessage(
            content=generation.text.strip(),
            name=self.name_replies,
            usage_metadata={
                "input_tokens": generation.prompt_tokens,
                "output_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
                "input_token_details": {"cache_read": 0},
            },
            response_metadata={
                "model_name": self.lm.spec,
                "finish_reason": generation.finish_reason,
                "ttft_s": generation.ttft_s,
                "latency_s": generation.latency_s,
            },
        )

    def _speaker_visible(self, message: BaseMessage) -> BaseMessage:
        if isinstance(message, AIMessage) and message.name and message.name != self.name_replies:
            return AIMessage(content=f"{message.name}: {message.content}")
        return message

    def _run(
        self, transcripts: Sequence[Sequence[BaseMessage]], stop: list[str] | None, **kwargs: Any
    ) -> list[AIMessage]:
        unknown = set(kwargs) - {"max_new_tokens", "temperature", "seed"}
        if unknown:
            raise TypeError(
                f"ChatLocalLM does not take {sorted(unknown)}; it takes max_new_tokens, temperature, seed, stop"
            )
        generations = self.lm.generate(
            [[self._speaker_visible(m) for m in t] for t in transcripts],
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            stop=stop,
            seed=kwargs.get("seed", self.seed),
        )
        return [self._to_message(g) for g in generations]

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
