"""The kv-reuse channel inside the runtime: piece-wise prompts, a reuse engine per model, caches kept per task.

On a team with kv-reuse edges every model turn is laid out in pieces (`plan_pieces`), each tokenized on its
own, so that the same text has the same ids, and so the same cache, in every prompt of a task:

    head    system prompt, examples, the user turn's opening markup      a template, encoded once per agent
    notes   "Your private notes: ..."                                     own text, prefilled in place
    task    "Context: ...\\n\\nQuestion: ..."                               the first model turn's cache of it
    glue    "\\n\\nMessage from X (this round):\\n"                          a template, encoded once standalone
    reply   the sender's reply, as the token ids it generated            the sender's own decode cache
    rest    what those ids do not cover (a tool's appendix)              own text, prefilled in place
    tail    "\\n\\n<instruction>" and the assistant turn's opening markup   prefilled by the decode batch

A message on a text edge is own text (its header included). A turn with a cached piece (the task, once a turn
of its task has run; a reply on a kv-reuse edge) asks its model's `ReuseEngine` to assemble the cache; the row
then joins the running batch with that cache as its prefix and prefills only its tail. When the anchor test
refuses, the turn runs dense and its prompt cache teaches the engine (`learn`). Anchors persist across runs
of the same team, so a team gets faster as it sees more tasks.

Caveats: a reply is read as the ids its sender generated, so its text may differ from the text channel's by a
leading space; the prompt text recorded for the turn is exactly what the model read. Reply and task caches
are kept until their task finishes (about 46 KB per token for SmolLM2-135M in float32).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate, pairwise

from kvmesh.agents.prompts import Inbound, PromptPlan, Sections, frame, transcript
from kvmesh.kvcomm.reuse import Assembly, Piece, ReuseConfig, ReuseEngine
from kvmesh.kvcomm.segment import KVSegment
from kvmesh.llm import LocalLM

KV_REUSE = "kv-reuse"


@dataclass
class _Part:
    """A stretch of the prompt before tokenization: text, or (a reply read from its cache) the sender's ids."""

    text: str
    kind: str  # "head", "own", "task", "glue", "reply" or "tail"
    ids: tuple[int, ...] = ()  # "reply" only: the sender's generated ids
    source: KVSegment | None = None  # "reply" only
    key: Hashable = None  # "reply" only


def _reply_parts(llm: LocalLM, content: str, kv: KVSegment | None, key: Hashable) -> list[_Part]:
    """A reply read through its sender's cache: the longest run of the sender's fed-back ids whose text starts
    `content` (leading whitespace-only tokens dropped); what they do not cover (a cut last token, a tool's
    appendix) follows as own text."""
    ids = kv.token_ids if kv is not None else ()
    decode = llm.tokenizer.decode
    start = 0
    while start < len(ids) and not decode(ids[start : start + 1]).strip():
        start += 1
    for end in range(len(ids), start, -1):
        text = decode(ids[start:end])
        if content.startswith(text.lstrip()):
            rest = content[len(text.lstrip()) :]
            reply = _Part(text, "reply", tuple(ids[start:end]), kv.slice(start, end), key)
            return [reply, _Part(rest, "own")] if rest else [reply]
    return [_Part(content, "own")]


def _tokenize(llm: LocalLM, parts: list[_Part]) -> list[tuple[tuple[int, ...], list[int]]]:
    """(token ids, where each starts in the part's text) per part. Text between replies is tokenized as one
    run, as the text channel would (a token belongs to the part its first character is in), so a dense kv-reuse
    prompt equals the text prompt whenever each reply's ids are its text's own tokenization."""
    found: list[tuple[tuple[int, ...], list[int]]] = []
    run: list[_Part] = []

    def flush() -> None:
        ids, spans = llm.encode_with_spans("".join(p.text for p in run))
        starts = [0, *accumulate(len(p.text) for p in run)]
        owner = [bisect_right(starts, lo) - 1 for lo, _ in spans]
        for index in range(len(run)):
            mine = [i for i, o in enumerate(owner) if o == index]
            found.append((tuple(ids[i] for i in mine), [spans[i][0] - starts[index] for i in mine]))
        run.clear()

    for part in parts:
        if part.kind == "reply":
            if run:
                flush()
            found.append((part.ids, [0] * len(part.ids)))
        else:
            run.append(part)
    flush()
    return found


def _piece(part: _Part, ids: tuple[int, ...], task_kv: KVSegment | None) -> Piece:
    if part.kind == "task":
        source = task_kv if task_kv is not None and task_kv.token_ids == ids else None
        return Piece(ids, source, "task", own=source is None)
    if part.kind == "reply":
        return Piece(ids, part.source, part.key)
    return Piece(ids, own=part.kind == "own")  # head, glue and tail are templates or prefilled by the batch


def plan_pieces(
    llm: LocalLM,
    system: str,
    question: str,
    context: str | None = None,
    shard: str | None = None,
    inbound: Sequence[Inbound] = (),
    instruction: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
    task_kv: KVSegment | None = None,
) -> PromptPlan:
    """The prompt of one turn in pieces (see the module docstring); the same sections as `plan_prompt`."""
    before, after = frame(llm, system, examples)
    sections = Sections.of(question, context, shard, inbound, instruction)
    parts = [_Part(before, "head")]
    if sections.notes:
        parts.append(_Part(sections.notes + "\n\n", "own"))
    parts.append(_Part(sections.task, "task"))
    firsts = []  # index of each message's first part
    for message, (header, content) in zip(inbound, sections.messages, strict=True):
        glue = f"\n\n{header}\n"
        firsts.append(len(parts))
        if message.channel == KV_REUSE and message.kv is not None:
            key = ("reply", message.source, message.kind)
            parts += [_Part(glue, "glue"), *_reply_parts(llm, content, message.kv, key)]
        else:  # a text edge, or a sender whose turn left no cache (a tool answered it)
            parts.append(_Part(glue + content, "own"))
    parts.append(_Part((f"\n\n{sections.instruction}" if sections.instruction else "") + after, "tail"))
    tokenized = _tokenize(llm, parts)
    pieces, sizes = [], []
    for part, (ids, _) in zip(parts, tokenized, strict=True):
        sizes.append(len(ids))
        if not ids:
            continue
        piece = _piece(part, ids, task_kv)
        if piece.own and pieces and pieces[-1].own:  # one prefill for adjacent own text
            piece = Piece(pieces.pop().token_ids + ids, own=True)
        pieces.append(piece)
    if not sizes[-1]:
        raise ValueError(f"{llm.spec}: the prompt's tail has no token of its own; kv-reuse cannot split it")
    task_index = next(i for i, part in enumerate(parts) if part.kind == "task")
    task_start = sum(sizes[:task_index])
    # a message's tokens, as on text edges: its header and content, not the blank line before it
    separator = [sum(1 for start in tokenized[i][1] if start < 2) for i in firsts]
    bounds = list(pairwise([*firsts, len(parts) - 1]))
    edge_tokens = [sum(sizes[lo:hi]) - sep for (lo, hi), sep in zip(bounds, separator, strict=True)]
    cached = [
        sum(sizes[i] for i in range(lo, hi) if parts[i].kind in ("glue", "reply"))
        - (sep if parts[lo].kind == "glue" else 0)
        for (lo, hi), sep in zip(bounds, separator, strict=True)
    ]
    content = "".join(part.text for part in parts[1:])[: -len(after) or None]
    return PromptPlan(
        messages=transcript(system, examples, content),
        text="".join(part.text for part in parts),
        token_ids=[t for piece in pieces for t in piece.token_ids],
        inbound=list(inbound),
        edge_tokens=edge_tokens,
        pieces=pieces,
        task_span=(task_start, task_start + sizes[task_index]),
        edge_cached=cached,
    )


class ReuseChannel:
    """A team's kv-reuse state: one `ReuseEngine` per model, created on first use, kept across runs."""

    def __init__(self, config: ReuseConfig | None = None) -> None:
        self.config = config or ReuseConfig()
        self.engines: dict[int, ReuseEngine] = {}

    def engine(self, llm: LocalLM) -> ReuseEngine:
        """The model's engine; raises `UnsupportedModelError` (saying why) for models it cannot handle."""
        if id(llm) not in self.engines:
            sink = llm.encode_prompt(frame(llm, "")[0])[:1]  # the template's first token opens every encoding
            self.engines[id(llm)] = ReuseEngine(llm, self.config, sink=sink)
        return self.engines[id(llm)]

    def assemble(self, llm: LocalLM, receiver: Hashable, plan: PromptPlan) -> Assembly | None:
        """The turn's prompt cache up to its tail, or None (run it dense) when nothing is cached yet or the
        anchor test refuses."""
        if not plan.reusable:
            return None
        return self.engine(llm).assemble(receiver, plan.pieces, spare=0)

    def learn(self, llm: LocalLM, receiver: Hashable, plan: PromptPlan, prompt_kv: KVSegment) -> None:
        """Teach the engine from a dense turn that could have reused (`plan.reusable`)."""
        self.engine(llm).learn(receiver, plan.pieces, prompt_kv)

    def stats(self) -> dict:
        """Reuse statistics over all models: calls that tried, calls that reused, tokens, anchor memory."""
        engines = list(self.engines.values())
        calls = sum(e.stats.calls for e in engines)
        reused = sum(e.stats.reused_calls for e in engines)
        return {
            "calls": calls,
            "reused_calls": reused,
            "reuse_rate": reused / calls if calls else 0.0,
            "prompt_tokens": sum(e.stats.prompt_tokens for e in engines),
            "reused_tokens": sum(e.stats.reused_tokens for e in engines),
            "anchor_memory_mb": sum(e.anchors.nbytes for e in engines) / 2**20,
            "anchors": sum(len(e.anchors) for e in engines),
            "template_encode_s": sum(e.stats.template_s for e in engines),
            "config": asdict(self.config),
        }
