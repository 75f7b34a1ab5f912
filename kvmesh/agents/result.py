"""TeamResult: the answer of one task, every message with the exact prompt behind it, and its usage."""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.messages import AIMessage

from kvmesh.agents.decision import DECISION_ROUND
from kvmesh.agents.task import Task
from kvmesh.agents.usage import UsageReport
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import channel_names, metadata_key


@dataclass
class TeamResult:
    """Outcome of `Team.run` for one task.

    Attributes:
        answer: the team's final answer (None only if no agent ran).
        messages: every reply in the order produced; each `AIMessage` has `name` = agent, `usage_metadata`,
            and `response_metadata` with `round`, `prompt` (the exact text the model read), `model`,
            `finish_reason`, `ttft_s` and `latency_s`; a turn that had something to read from a cache says
            how its channel served it (`kv_reuse`: "reused" or "dense").
        stop_reason: "completed", "budget" when the token budget stopped the run early, or "context" when a
            prompt grew past its model's context (the `ContextExceeded` event and the log say which and by how much).
        skipped: (agent, round) turns not run because of the budget or the context.
    """

    task: Task
    answer: str | None
    messages: list[AIMessage]
    usage: UsageReport
    graph: CommGraph
    stop_reason: str = "completed"
    skipped: list[tuple[str, int | str]] = field(default_factory=list)

    @property
    def budget_exhausted(self) -> bool:
        return self.stop_reason == "budget"

    def prompts(self) -> list[tuple[str, int | str, str]]:
        """(agent, round, prompt text) for every model call, in order (turns a tool answered have no prompt)."""
        return [
            (m.name, m.response_metadata["round"], m.response_metadata["prompt"])
            for m in self.messages
            if "prompt" in m.response_metadata
        ]

    def transcript(self) -> str:
        lines = []
        for m in self.messages:
            r = m.response_metadata["round"]
            label = "decision" if r == DECISION_ROUND else f"round {r}"
            content = m.content
            if not content and m.response_metadata.get("finish_reason") == "prefill":  # a latent channel's sender
                content = "(prefilled only: its receivers read its prompt's KV cache, so it writes no text)"
            lines.append(f"[{m.name} · {label}] {content}")
        return "\n\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "task_id": self.task.id,
            "question": self.task.question,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "skipped": [list(s) for s in self.skipped],
            "messages": [_message_dict(m) for m in self.messages],
            "usage": self.usage.to_dict(),
            "graph": self.graph.to_dict(),
        }


def _message_dict(message: AIMessage) -> dict:
    """One message for JSON: who, when, what, the exact prompt, and which tool answered or edited it."""
    meta = message.response_metadata
    data = {"agent": message.name, "round": meta["round"], "content": message.content}
    data |= {key: meta.get(key) for key in ("prompt", "model", "finish_reason")}
    for key in ("tool", "edited_by", *(metadata_key(name) for name in channel_names())):
        if key in meta:
            data[key] = meta[key]
    return data | {"usage": dict(message.usage_metadata)}
