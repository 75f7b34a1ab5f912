"""Building the exact prompt one agent reads in one turn, in pieces, and attributing its tokens to incoming edges.

Layout of the user turn (sections appear only when present):

    Your private notes:
    <this agent's shard>

    Context:
    <task.context>

    Question: <task.question>

    Message from <source> (<this round | previous round | final round>):
    <source's reply>
    ...

    <instruction>

The prompt is the agent's chat frame (`ChatFormat.frame`: system prompt, examples, markup) around that turn,
laid out as pieces (`kvmesh.kvcomm.assembly`): the head, the private notes (own text), the task, one or more
pieces per message as the message's channel lays them out and places them (`Channel.layout`: in the message's
place, or in front of the whole prompt), and the tail. Text between pre-tokenized pieces
is tokenized as one run, and a token belongs to the piece its first character is in, so a prompt whose messages
all travel as text has exactly the ids of its rendered text, and the same text has the same ids (and so the same
cache) in every prompt of a task. Private notes come first so that everything after them is text other agents'
prompts share.

Only the frame (head and tail) may hold control tokens: a task, shard or message that spells one (`<|im_end|>`)
is read as that text, never as the token, so nobody's data can close a turn or open a system prompt. Its
recorded prompt text is the same characters; its ids (and token counts) are the plain-text ones.

Each message costs the receiver its header and content tokens: those are the edge's tokens, counted on the ids
the model reads, not on a re-tokenised fragment.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate

from langchain_core.messages import BaseMessage

from kvmesh.graph.edge import DECISION, SPATIAL, TEMPORAL
from kvmesh.kvcomm.assembly import HEAD, OWN, TAIL, TASK, Piece
from kvmesh.kvcomm.channel import Cached, Channel, default_channel
from kvmesh.llm.base import LanguageModel, encode_data
from kvmesh.llm.chat import transcript
from kvmesh.llm.segment import KVSegment

DECISION_INSTRUCTION = "Read your team's messages and give the single final answer to the question."
_WHEN = {SPATIAL: "this round", TEMPORAL: "previous round", DECISION: "final round"}
MARKUP = (HEAD, TAIL)  # the chat frame's own text, whose control tokens are real; every other piece is data


@dataclass(frozen=True)
class Inbound:
    """A message arriving on an edge, with its sender's reply cache when a channel kept one."""

    source: str
    kind: str  # "spatial", "temporal" or "decision"
    channel: str
    content: str
    kv: KVSegment | None = field(default=None, compare=False, repr=False)

    def header(self) -> str:
        return f"Message from {self.source} ({_WHEN[self.kind]}):"


@dataclass
class PromptPlan:
    """Everything about one agent turn's input.

    messages: the transcript (system + user turn); text: its rendering, exactly what the model reads;
    token_ids: len P; edge_tokens: one count per inbound message, summing to at most P; pieces: token_ids in
    pieces (their ids add up to token_ids); task_span: where the task lies in token_ids; edge_cached: each
    message's tokens that an assembled cache serves (its glue and reply when they were read from a cache);
    edge_pieces: the pieces each inbound message was laid out as, before tokenization (their sources included).
    """

    messages: list[BaseMessage]
    text: str
    token_ids: list[int]
    inbound: list[Inbound]
    edge_tokens: list[int]
    pieces: list[Piece]
    task_span: tuple[int, int]
    edge_cached: list[int]
    edge_pieces: list[list[Piece]]

    @property
    def reusable(self) -> bool:
        """A turn with a cached piece: one a channel is asked to place."""
        return any(piece.source is not None for piece in self.pieces)


def _sections(question: str, context: str | None, shard: str | None) -> tuple[str | None, str]:
    task = f"Question: {question.strip()}"
    if context:
        task = f"Context:\n{context.strip()}\n\n{task}"
    return (f"Your private notes:\n{shard.strip()}" if shard else None), task


def user_turn(
    question: str,
    context: str | None,
    shard: str | None,
    inbound: Sequence[Inbound],
    instruction: str | None,
) -> str:
    """The user turn's text, as the planner lays it out with every message as text (for few-shot examples)."""
    notes, task = _sections(question, context, shard)
    blocks = [notes] if notes else []
    blocks += [task, *(f"{m.header()}\n{m.content.strip()}" for m in inbound)]
    return "\n\n".join(blocks + ([instruction] if instruction else []))


def _tokenize(model: LanguageModel, pieces: list[Piece]) -> list[tuple[tuple[int, ...], list[int]]]:
    """(token ids, where each starts in the piece's text) per piece. Text between pre-tokenized pieces is
    tokenized as one run (a token belongs to the piece its first character is in)."""
    found: list[tuple[tuple[int, ...], list[int]]] = []
    run: list[Piece] = []

    def flush() -> None:
        starts = [0, *accumulate(len(p.text) for p in run)]
        data = [(starts[i], starts[i + 1]) for i, p in enumerate(run) if p.kind not in MARKUP]
        ids, spans = encode_data(model, "".join(p.text for p in run), data)
        owner = [bisect_right(starts, lo) - 1 for lo, _ in spans]
        for index in range(len(run)):
            mine = [i for i, o in enumerate(owner) if o == index]
            found.append((tuple(ids[i] for i in mine), [spans[i][0] - starts[index] for i in mine]))
        run.clear()

    for piece in pieces:
        if piece.token_ids:  # a sender's ids, read as they were generated
            if run:
                flush()
            found.append((piece.token_ids, [0] * len(piece.token_ids)))
        else:
            run.append(piece)
    flush()
    return found


def plan_prompt(
    model: LanguageModel,
    system: str,
    question: str,
    context: str | None = None,
    shard: str | None = None,
    inbound: Sequence[Inbound] = (),
    instruction: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
    channels: Mapping[str, Channel] | None = None,
    task_cache: Cached | None = None,
) -> PromptPlan:
    """The prompt of one turn: system, the few-shot `examples` as earlier (user, reply) turns, the user turn.

    `channels` lay out each message by its channel's name (default: each channel with default settings);
    `task_cache` is the task's cache from an earlier turn, read in place of prefilling the task."""
    before, after = model.chat.frame(system, examples)
    notes, task = _sections(question, context, shard)
    body = [Piece(text=before, kind=HEAD)]
    if notes:
        body.append(Piece(own=True, text=notes + "\n\n", kind=OWN))
    task_index = len(body)
    body.append(Piece(text=task, kind=TASK, key="task"))
    front: list[Piece] = []  # pieces a channel placed in front of the receiver's whole prompt (latent contexts)
    laid: list[tuple[bool, int, int]] = []  # per message: (in front, start, end) of its pieces
    for message in inbound:
        channel = (channels or {}).get(message.channel) or default_channel(message.channel)
        glue, key = f"\n\n{message.header()}\n", ("reply", message.source, message.kind)
        own = channel.layout(model, glue, message.content.strip(), message.kv, key)
        latent = bool(own) and all(piece.front for piece in own)
        target = front if latent else body
        laid.append((latent, len(target), len(target) + len(own)))
        target += own
    tail = (f"\n\n{instruction}" if instruction else "") + after
    if not tail:
        raise ValueError(f"{model.spec}: the chat template adds nothing after the user turn to open the reply")
    body.append(Piece(text=tail, kind=TAIL))
    pieces = front + body
    task_index += len(front)
    ranges = [(lo, hi) if latent else (lo + len(front), hi + len(front)) for latent, lo, hi in laid]

    tokenized = _tokenize(model, pieces)
    sizes = [len(ids) for ids, _ in tokenized]
    if not sizes[-1]:
        raise ValueError(f"{model.spec}: the prompt's tail has no token of its own, so it cannot be split")
    planned = []
    for index, (piece, (ids, _)) in enumerate(zip(pieces, tokenized, strict=True)):
        if index == task_index:
            cached = task_cache is not None and task_cache.segment.token_ids == ids
            source, channel = (task_cache.segment, task_cache.channel) if cached else (None, None)
            piece = replace(piece, own=source is None, source=source, channel=channel)
        if not ids and piece.text:  # text that tokenized to nothing; a piece without text carries only cache rows
            continue
        piece = replace(piece, token_ids=ids)
        mergeable = planned and planned[-1].own and TASK not in (piece.kind, planned[-1].kind)
        if piece.own and mergeable:  # one prefill for adjacent own text; the task stays a piece (c2c fuses it)
            last = planned.pop()
            piece = replace(last, token_ids=last.token_ids + ids, text=last.text + piece.text)
        planned.append(piece)
    task_start = sum(sizes[:task_index])
    # a message's tokens, as in its text: its header and content, not the blank line before it
    separator = [sum(1 for start in tokenized[lo][1] if start < 2) if pieces[lo].text else 0 for lo, _ in ranges]
    edge_tokens = [sum(sizes[lo:hi]) - sep for (lo, hi), sep in zip(ranges, separator, strict=True)]
    edge_cached = [
        sum(sizes[i] for i in range(lo, hi) if not pieces[i].own) - (sep if not pieces[lo].own else 0)
        for (lo, hi), sep in zip(ranges, separator, strict=True)
    ]
    content = "".join(piece.text for piece in body[1:])[: -len(after) or None]
    return PromptPlan(
        messages=transcript(system, examples, content),
        text="".join(piece.text for piece in pieces),
        token_ids=[t for piece in planned for t in piece.token_ids],
        inbound=list(inbound),
        edge_tokens=edge_tokens,
        pieces=planned,
        task_span=(task_start, task_start + sizes[task_index]),
        edge_cached=edge_cached,
        edge_pieces=[pieces[lo:hi] for lo, hi in ranges],
    )
