"""Building the exact prompt one agent reads in one turn, and attributing its tokens to incoming edges.

Layout of the user turn (sections appear only when present):

    Context:
    <task.context>

    Your private notes:
    <this agent's shard>

    Question: <task.question>

    Message from <source> (<this round | previous round>):
    <source's reply>
    ...

    <instruction>

Each "Message from" block is the part of the prompt that its edge costs. We locate every block by character
offsets in the rendered prompt and count the real prompt tokens that start inside it, so edge usage is exact
with respect to the ids the model reads, not a re-tokenisation of a fragment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from kvmesh.llm import LocalLM

DECISION_INSTRUCTION = "Read your team's messages and give the single final answer to the question."


@dataclass(frozen=True)
class Inbound:
    """A message arriving on an edge."""

    source: str
    kind: str  # "spatial", "temporal" or "decision"
    channel: str
    content: str

    def header(self) -> str:
        when = {"spatial": "this round", "temporal": "previous round", "decision": "final round"}[self.kind]
        return f"Message from {self.source} ({when}):"


@dataclass
class PromptPlan:
    """Everything about one agent turn's input.

    messages: the transcript (system + user turn); text: its rendering, exactly what the model reads;
    token_ids: len P; edge_tokens: one count per inbound message, summing to at most P.
    """

    messages: list[BaseMessage]
    text: str
    token_ids: list[int]
    inbound: list[Inbound]
    edge_tokens: list[int]


def user_turn(
    question: str,
    context: str | None,
    shard: str | None,
    inbound: Sequence[Inbound],
    instruction: str | None,
) -> tuple[str, list[tuple[int, int]]]:
    """The user turn's text and the character span of each inbound block within it."""
    parts: list[str] = []
    if context:
        parts.append(f"Context:\n{context.strip()}")
    if shard:
        parts.append(f"Your private notes:\n{shard.strip()}")
    parts.append(f"Question: {question.strip()}")
    spans: list[tuple[int, int]] = []
    for message in inbound:
        offset = sum(len(p) + 2 for p in parts)  # parts are joined by blank lines
        block = f"{message.header()}\n{message.content.strip()}"
        spans.append((offset, offset + len(block)))
        parts.append(block)
    if instruction:
        parts.append(instruction)
    return "\n\n".join(parts), spans


def plan_prompt(
    llm: LocalLM,
    system: str,
    question: str,
    context: str | None = None,
    shard: str | None = None,
    inbound: Sequence[Inbound] = (),
    instruction: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
) -> PromptPlan:
    """The prompt of one turn: system, the few-shot `examples` as earlier (user, reply) turns, the user turn."""
    content, spans = user_turn(question, context, shard, inbound, instruction)
    shots = [m for user, reply in examples for m in (HumanMessage(content=user), AIMessage(content=reply))]
    messages: list[BaseMessage] = [SystemMessage(content=system), *shots, HumanMessage(content=content)]
    text = llm.render(messages)
    token_ids, token_spans = llm.encode_with_spans(text)  # one tokenizer call per turn
    base = text.rfind(content)  # the last occurrence: an example turn may hold the same text
    edge_tokens = [0] * len(spans)
    if spans and base >= 0:
        starts = [start for start, _ in token_spans]
        for i, (lo, hi) in enumerate(spans):
            edge_tokens[i] = sum(1 for s in starts if base + lo <= s < base + hi)
    return PromptPlan(messages, text, token_ids, list(inbound), edge_tokens)
