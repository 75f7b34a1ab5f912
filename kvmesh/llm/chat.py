"""Turning a transcript of chat messages into the exact prompt text a model reads.

Instruction models render through the tokenizer's own chat template. Templates differ in what they accept:
some reject a system role, some demand strict user/assistant alternation. We try the transcript as given and,
only if the template refuses it, merge consecutive same-role turns and fold the system text into the first user
turn; the meaning is kept and the template's own markup is used. A transcript may end with an assistant
message (another agent's reply): the generation prompt then opens a new assistant turn after it.

Base models without a template get a plain "Role: text" layout, opened with the tokenizer's BOS token written
as text (so the prompt text shows every token the model reads), plus stop strings so that generation ends
where the next turn would begin.

An agent's turn is `transcript(system, examples, content)`: its system prompt, few-shot (user, reply) turns,
and one user turn. `ChatFormat.frame(system, examples)` renders that transcript around an invisible marker and
splits it there: the text before the user turn's content and after it, the same for every turn of the agent,
so a prompt can be laid out (and cached) piece by piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jinja2 import TemplateError
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage

ChatTurn = dict[str, str]
PLAIN_STOPS = ("\nUser:", "\nSystem:")
MARKER = "\u2063"  # an invisible separator: stands for the user turn's content when the frame is rendered
_ROLE_OF = {"system": "system", "human": "user", "ai": "assistant", "user": "user", "assistant": "assistant"}


def to_turns(messages: Sequence[BaseMessage | ChatTurn | tuple[str, str]]) -> list[ChatTurn]:
    """Normalise langchain messages, `{"role", "content"}` dicts or `(role, content)` pairs to dict turns."""
    turns: list[ChatTurn] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            role, content = message.role, message.content
        elif isinstance(message, BaseMessage):
            role, content = message.type, message.content
        elif isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        elif isinstance(message, tuple) and len(message) == 2:
            role, content = message
        else:
            raise TypeError(f"cannot read {type(message).__name__} as a chat message; use a langchain message")
        if role not in _ROLE_OF:
            raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(set(_ROLE_OF))}")
        if not isinstance(content, str):
            raise TypeError(f"message content must be text, got {type(content).__name__}")
        turns.append({"role": _ROLE_OF[role], "content": content})
    if not turns:
        raise ValueError("a chat transcript needs at least one message")
    return turns


def from_turns(turns: Sequence[ChatTurn]) -> list[BaseMessage]:
    classes = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [classes[turn["role"]](content=turn["content"]) for turn in turns]


def transcript(system: str, examples: Sequence[tuple[str, str]], content: str) -> list[BaseMessage]:
    """One agent turn: the system prompt, each example as an earlier (user, reply) pair, then the user turn."""
    shots = [m for user, reply in examples for m in (HumanMessage(content=user), AIMessage(content=reply))]
    return [SystemMessage(content=system), *shots, HumanMessage(content=content)]


def _merge_for_strict_templates(turns: list[ChatTurn]) -> list[ChatTurn]:
    """Fold system text into the first user turn and merge consecutive same-role turns."""
    system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
    rest = [dict(t) for t in turns if t["role"] != "system"]
    if not rest or rest[0]["role"] != "user":
        rest.insert(0, {"role": "user", "content": ""})
    if system:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}".rstrip()
    merged: list[ChatTurn] = []
    for turn in rest:
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1]["content"] += "\n\n" + turn["content"]
        else:
            merged.append(turn)
    return merged


@dataclass(frozen=True)
class ChatFormat:
    """Renders transcripts for one tokenizer. `stop` lists stop strings that this layout needs."""

    tokenizer: object
    stop: tuple[str, ...] = ()
    _frames: dict = field(default_factory=dict, compare=False, repr=False)  # (system, examples) -> frame

    @classmethod
    def for_tokenizer(cls, tokenizer) -> ChatFormat:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        return cls(tokenizer=tokenizer, stop=() if has_template else PLAIN_STOPS)

    @property
    def uses_template(self) -> bool:
        return not self.stop

    def render(self, messages: Sequence, add_generation_prompt: bool = True) -> str:
        turns = to_turns(messages)
        if not self.uses_template:
            bos = getattr(self.tokenizer, "bos_token", None) or ""
            return bos + _render_plain(turns, add_generation_prompt)
        try:
            return self._apply(turns, add_generation_prompt)
        except TemplateError:
            return self._apply(_merge_for_strict_templates(turns), add_generation_prompt)

    def frame(self, system: str, examples: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
        """The rendered turn's text before the user turn's content (system, examples, markup) and after it."""
        key = (system, tuple(tuple(pair) for pair in examples))
        if key not in self._frames:
            before, found, after = self.render(transcript(system, examples, MARKER)).partition(MARKER)
            if not found or MARKER in after:
                name = getattr(self.tokenizer, "name_or_path", "this model")
                raise ValueError(f"{name}: the chat template does not keep the user turn's text in one place")
            if len(self._frames) >= 1024:  # agents have few distinct system prompts; stay bounded anyway
                self._frames.pop(next(iter(self._frames)))
            self._frames[key] = (before, after)
        return self._frames[key]

    def _apply(self, turns: list[ChatTurn], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)


def _render_plain(turns: list[ChatTurn], add_generation_prompt: bool) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    text = "\n\n".join(f"{names[t['role']]}: {t['content']}" for t in turns)
    return text + "\n\nAssistant:" if add_generation_prompt else text
