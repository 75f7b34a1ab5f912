"""Building the exact prompt one agent reads in one turn, and attributing its tokens to incoming edges.

Layout of the user turn (sections appear only when present):

    Your private notes:
    <this agent's shard>

    Context:
    <task.context>

    Question: <task.question>

    Message from <source> (<this round | previous round>):
    <source's reply>
    ...

    <instruction>

Each "Message from" block is the part of the prompt that its edge costs. We locate every block by character
offsets in the rendered prompt and count the real prompt tokens that start inside it, so edge usage is exact
with respect to the ids the model reads, not a re-tokenisation of a fragment.

Private notes come first so that everything after them (task, messages) is text other agents' prompts share;
the kv-reuse channel (`kvmesh.agents.reuse_channel`) lays the same sections out piece by piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from kvmesh.llm import LocalLM

DECISION_INSTRUCTION = "Read your team's messages and give the single final answer to the question."
MARKER = "\u2063"  # an invisible separator: stands for the user turn's content when the frame is rendered


@dataclass(frozen=True)
class Inbound:
    """A message arriving on an edge."""

    source: str
    kind: str  # "spatial", "temporal" or "decision"
    channel: str
    content: str
    kv: object = field(default=None, compare=False, repr=False)  # kv-reuse: the sender's reply cache (KVSegment)

    def header(self) -> str:
        when = {"spatial": "this round", "temporal": "previous round", "decision": "final round"}[self.kind]
        return f"Message from {self.source} ({when}):"


@dataclass
class PromptPlan:
    """Everything about one agent turn's input.

    messages: the transcript (system + user turn); text: its rendering, exactly what the model reads;
    token_ids: len P; edge_tokens: one count per inbound message, summing to at most P.
    On kv-reuse teams, `pieces` split token_ids for the reuse engine, `task_span` locates the task in them and
    `edge_cached` counts each message's tokens that an assembled cache serves (its header and reply).
    """

    messages: list[BaseMessage]
    text: str
    token_ids: list[int]
    inbound: list[Inbound]
    edge_tokens: list[int]
    pieces: list | None = None  # kvmesh.kvcomm.reuse.Piece
    task_span: tuple[int, int] | None = None
    edge_cached: list[int] | None = None

    @property
    def reusable(self) -> bool:
        """A kv-reuse turn with a cached piece: one the reuse engine is asked to assemble."""
        return self.pieces is not None and any(piece.source is not None for piece in self.pieces)


@dataclass(frozen=True)
class Sections:
    """The user turn's sections, each None or text; the turn is them joined by blank lines, in this order."""

    notes: str | None
    task: str  # context and question: the same in every prompt of a task
    messages: list[tuple[str, str]]  # (header line, content) per inbound message
    instruction: str | None

    @classmethod
    def of(cls, question, context, shard, inbound: Sequence[Inbound], instruction) -> Sections:
        task = f"Question: {question.strip()}"
        if context:
            task = f"Context:\n{context.strip()}\n\n{task}"
        notes = f"Your private notes:\n{shard.strip()}" if shard else None
        return cls(notes, task, [(m.header(), m.content.strip()) for m in inbound], instruction or None)


def user_turn(
    question: str,
    context: str | None,
    shard: str | None,
    inbound: Sequence[Inbound],
    instruction: str | None,
) -> tuple[str, list[tuple[int, int]]]:
    """The user turn's text and the character span of each inbound block within it."""
    sections = Sections.of(question, context, shard, inbound, instruction)
    parts = [sections.notes] if sections.notes else []
    parts.append(sections.task)
    spans: list[tuple[int, int]] = []
    for header, content in sections.messages:
        offset = sum(len(p) + 2 for p in parts)  # parts are joined by blank lines
        block = f"{header}\n{content}"
        spans.append((offset, offset + len(block)))
        parts.append(block)
    if sections.instruction:
        parts.append(sections.instruction)
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
    messages = transcript(system, examples, content)
    text = llm.render(messages)
    token_ids, token_spans = llm.encode_with_spans(text)  # one tokenizer call per turn
    base = text.rfind(content)  # the last occurrence: an example turn may hold the same text
    edge_tokens = [0] * len(spans)
    if spans and base >= 0:
        starts = [start for start, _ in token_spans]
        for i, (lo, hi) in enumerate(spans):
            edge_tokens[i] = sum(1 for s in starts if base + lo <= s < base + hi)
    return PromptPlan(messages, text, token_ids, list(inbound), edge_tokens)


def transcript(system: str, examples: Sequence[tuple[str, str]], content: str) -> list[BaseMessage]:
    shots = [m for user, reply in examples for m in (HumanMessage(content=user), AIMessage(content=reply))]
    return [SystemMessage(content=system), *shots, HumanMessage(content=content)]


def frame(llm: LocalLM, system: str, examples: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
    """The rendered prompt's text before the user turn's content (system, examples, markup) and after it."""
    before, found, after = llm.render(transcript(system, examples, MARKER)).partition(MARKER)
    if not found or MARKER in after:
        raise ValueError(f"{llm.spec}: the chat template does not keep the user turn's text in one place")
    return before, after
