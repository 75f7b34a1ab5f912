"""The `kv-reuse` channel (KVCOMM): receivers read the task and other agents' replies from caches that exist.

On a team with kv-reuse edges, each turn's prompt is laid out in pieces (`kvmesh.kvcomm.assembly`). This
channel lays out a message that arrives with its sender's reply cache as

    glue    "\\n\\nMessage from X (this round):\\n"     a template, encoded once standalone
    reply   the sender's reply, as the ids it generated   the sender's own decode cache
    rest    what those ids do not cover (a tool's appendix) own text, prefilled in place

and the task piece of every later turn comes from the first turn of its task that encoded it. A turn with a
cached piece asks its model's `ReuseEngine` to assemble the cache (the agent's head as a template, every
cached piece moved and corrected by anchors, own text prefilled in place); the turn's row then joins the
running batch with that cache as its prefix and prefills only its tail. When the anchor test refuses, the turn
runs dense and its prompt cache teaches the engine (`learn`). Anchors persist across runs of the same team, so
a team gets faster as it sees more tasks; with `anchors_dir` they also persist across processes: each model's
pool is loaded when its engine is built and written by `save()`, which whoever runs the team calls after a run
(`channel.save_channels`). A folder made for another model is refused when the team is built (another layout
or chat template under the same name, when the model is loaded), with the fix in the message.

Caveats: a reply is read as the ids its sender generated, so its text may differ from the text channel's by a
leading space; the prompt text recorded for the turn is exactly what the model read. Reply and task caches
are kept until their task finishes (about 46 KB per token for SmolLM2-135M in float32). Both ends of an edge
must share one model: a cache means something only to the model that made it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict
from pathlib import Path

from kvmesh.kvcomm.assembly import OWN, Piece, Preparation
from kvmesh.kvcomm.channel import (
    Cached,
    Channel,
    ChannelNotAvailableError,
    Endpoint,
    Keep,
    TurnView,
    reply_key,
    task_key,
)
from kvmesh.kvcomm.kv_reuse.anchors import AnchorFolder
from kvmesh.kvcomm.kv_reuse.engine import ReuseConfig, ReuseEngine
from kvmesh.llm.base import Generation, KVModel, LanguageModel
from kvmesh.llm.segment import KVSegment

ANCHOR_SETTINGS = ("max_anchors", "max_anchor_tokens", "max_anchor_mb")  # recorded with saved pools
GLUE, REPLY = "glue", "reply"  # a message's header (a template) and the sender's reply ids (its decode cache)


def _same_model(a: Endpoint, b: Endpoint) -> bool:
    return a.model is b.model or a.model_spec == b.model_spec


class KVReuseChannel(Channel):
    """A team's kv-reuse state: one `ReuseEngine` per model, created before the first call, kept across runs."""

    name = "kv-reuse"
    summary = "the sender's reply as text, its KV cache reused instead of prefilled again"
    settings_class = ReuseConfig
    carries_caches = True

    def __init__(self, settings: ReuseConfig | None = None) -> None:
        super().__init__(settings)
        self.engines: dict[int, ReuseEngine] = {}
        self.folder = AnchorFolder(self.config.anchors_dir) if self.config.anchors_dir else None
        self._saved: dict[int, int] = {}  # per engine: its pool's version when last loaded or saved

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        if not _same_model(sender, receiver):
            raise ChannelNotAvailableError(
                f"kv-reuse {where} joins agents on different models ({sender.model_spec} and {receiver.model_spec}); "
                "a cache is only meaningful to the model that made it. Use channel='text' on that edge, or put "
                "both agents on one model."
            )
        if self.folder is not None:  # by name, from the manifest alone: before any model loads
            self.folder.check_model(receiver.model_spec)

    def prepare(self, model: LanguageModel) -> None:
        """Build the model's engine; raises `UnsupportedModelError` (saying why) for models it cannot handle."""
        self.engine(model)

    def engine(self, model: LanguageModel) -> ReuseEngine:
        if id(model) not in self.engines:
            if not isinstance(model, KVModel):
                raise ChannelNotAvailableError(f"{model.spec}: kv-reuse needs a model in this process (a LocalLM)")
            sink = model.encode_prompt(model.chat.frame("")[0])[:1]  # the template's first token opens every encoding
            engine = ReuseEngine(model, self.config, sink=sink)
            if self.folder is not None:
                engine.stats.anchors_loaded = self.folder.load(engine.identity(), engine.anchors, model.model.device)
            self.engines[id(model)] = engine
            self._saved[id(model)] = engine.anchors.version
        return self.engines[id(model)]

    def save(self) -> list[Path]:
        """Write to `anchors_dir` each model's pool that changed since it was loaded or saved (atomically, so a
        crash keeps the last complete save); returns the files written, [] without a folder."""
        if self.folder is None:
            return []
        settings = {name: getattr(self.config, name) for name in ANCHOR_SETTINGS}
        written = []
        for key, engine in self.engines.items():
            if engine.anchors.version != self._saved[key]:
                written.append(self.folder.save(engine.identity(), engine.anchors, settings))
                self._saved[key] = engine.anchors.version
        return written

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        """A message read through its sender's cache: the glue, then the longest run of the sender's fed-back
        ids whose text starts `content` (leading whitespace-only tokens dropped); what they do not cover (a cut
        last token, a tool's appendix) follows as own text. Without a cache: the text channel's layout."""
        ids = cached.token_ids if cached is not None else ()
        start = 0
        while start < len(ids) and not model.decode(ids[start : start + 1]).strip():
            start += 1
        for end in range(len(ids), start, -1):
            text = model.decode(ids[start:end])
            if content.startswith(text.lstrip()):
                rest = content[len(text.lstrip()) :]
                reply = Piece(ids[start:end], cached.slice(start, end), key, text=text, kind=REPLY, channel=self.name)
                own = [Piece(own=True, text=rest, kind=OWN)] if rest else []
                return [Piece(text=glue, kind=GLUE, channel=self.name), reply, *own]
        return [Piece(own=True, text=glue + content, kind=OWN)]

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation:
        """The turn's prompt cache up to its tail, or None (run it dense) when the anchor test refuses."""
        return self.engine(model).assemble(receiver, pieces, spare=0)

    def keeps(self, turn: TurnView) -> Keep:
        """A dense turn that could have reused keeps its prompt's cache to teach anchors, and so does the task's
        first turn (it serves the task); a reply is kept when a later turn reads it over kv-reuse."""
        if id(turn.model) not in self.engines:  # a model on no kv-reuse edge (another channel serves it)
            return Keep()
        prompt = not turn.assembled and (_reads_kv_reuse(turn.pieces) or task_key(turn.model) not in turn.store)
        return Keep(prompt=prompt, reply=self.config.replies and self.name in turn.read_over)

    def learn(self, turn: TurnView, generation: Generation) -> None:
        if id(turn.model) not in self.engines:
            return
        if generation.prompt_kv is not None:
            if task_key(turn.model) not in turn.store:
                task = generation.prompt_kv.slice(*turn.task_span).detached()
                turn.store[task_key(turn.model)] = Cached(self.name, task)
            if not turn.assembled and _reads_kv_reuse(turn.pieces):
                self.engine(turn.model).learn(turn.receiver, turn.pieces, generation.prompt_kv)
        if generation.reply_kv is not None and self.keeps(turn).reply:
            turn.store[reply_key(*turn.receiver)] = Cached(self.name, generation.reply_kv)

    def stats(self) -> dict:
        """Reuse statistics over all models: calls that tried, calls that reused, tokens, anchor memory, anchors
        loaded from `anchors_dir`; and a `note` saying why, when calls tried and none reused."""
        engines = list(self.engines.values())
        calls = sum(e.stats.calls for e in engines)
        reused = sum(e.stats.reused_calls for e in engines)
        loaded = sum(e.stats.anchors_loaded for e in engines)
        note = {"note": self._why_nothing_reused(loaded)} if calls and not reused else {}
        return {
            "calls": calls,
            "reused_calls": reused,
            "reuse_rate": reused / calls if calls else 0.0,
            "prompt_tokens": sum(e.stats.prompt_tokens for e in engines),
            "reused_tokens": sum(e.stats.reused_tokens for e in engines),
            "anchor_memory_mb": sum(e.anchors.nbytes for e in engines) / 2**20,
            "anchors": sum(len(e.anchors) for e in engines),
            "anchors_loaded": loaded,
            "template_encode_s": sum(e.stats.template_s for e in engines),
            "config": asdict(self.config),
            **note,
        }

    def _why_nothing_reused(self, loaded: int) -> str:
        if self.folder is None:
            return (
                "reused nothing: anchors start empty in each process: pass anchors_dir (--anchors DIR) to keep "
                "them across runs"
            )
        return (
            f"reused nothing: a placeholder is reused once it has min_anchors={self.config.min_anchors} anchors "
            f"within gamma={self.config.gamma}; {loaded} were loaded from {self.folder.path}, and what this run "
            "learned is saved there for the next"
        )


def _reads_kv_reuse(pieces: Sequence[Piece]) -> bool:
    """Whether a turn had something to read over kv-reuse: a piece whose cache this channel made."""
    return any(piece.source is not None and piece.channel == KVReuseChannel.name for piece in pieces)
