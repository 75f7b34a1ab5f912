"""Token and time accounting, in langchain-core's `UsageMetadata` shape.

Every number comes from real token ids: prompt tokens are the ids the model read, completion tokens the ids it
generated (an end-of-sequence token included), `cache_read` the prompt tokens served from a reused KV cache
instead of being prefilled (always 0 on `text` edges of an in-process model; a server's own prefix cache counts
too, and a server that does not report it makes `cache_read` None: unknown, left out of `input_token_details`),
`kv_bytes` the bytes of other agents' KV caches a call read (what a latent channel moved; 0 on `text` edges),
`latent_steps` the latent thoughts a call ran after its prompt (forward passes that read a hidden state, not a
token: they are neither input nor output tokens; a receiver that reads them counts their positions as input, in
`cache_read`).

Edge usage counts the receiver's prompt tokens that carry the sender's message, located by character offsets
in the real prompt, so per-edge numbers add up to part of the receiver's own input tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.messages.ai import UsageMetadata


@dataclass
class Usage:
    """Tokens and time of one or more model calls.

    `call_time_s` adds up the latency of each call served (more than the elapsed time when calls ran batched
    side by side); `min_call_ttft_s` is the quickest call's time to first token, from that call's own start.
    Elapsed times of a whole run are `UsageReport.wall_time_s` and `UsageReport.ttft_s`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int | None = 0  # None: a server that served some of these calls did not say (unknown, never 0)
    calls: int = 0
    call_time_s: float = 0.0
    min_call_ttft_s: float | None = None
    kv_bytes: int = 0
    latent_steps: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        firsts = [t for t in (self.min_call_ttft_s, other.min_call_ttft_s) if t is not None]
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read=None if None in (self.cache_read, other.cache_read) else self.cache_read + other.cache_read,
            calls=self.calls + other.calls,
            call_time_s=self.call_time_s + other.call_time_s,
            min_call_ttft_s=min(firsts) if firsts else None,
            kv_bytes=self.kv_bytes + other.kv_bytes,
            latent_steps=self.latent_steps + other.latent_steps,
        )

    def to_metadata(self) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.total_tokens,
            input_token_details={} if self.cache_read is None else {"cache_read": self.cache_read},
        )

    def to_dict(self) -> dict:
        data = dict(self.to_metadata())
        data |= {"calls": self.calls, "call_time_s": round(self.call_time_s, 6), "kv_bytes": self.kv_bytes}
        if self.latent_steps:
            data["latent_steps"] = self.latent_steps
        if self.min_call_ttft_s is not None:
            data["min_call_ttft_s"] = round(self.min_call_ttft_s, 6)
        return data


@dataclass
class UsageReport:
    """Usage of one task's run, broken down per agent, per edge and per round (`"decision"` for the decision).

    `wall_time_s` is the elapsed time of the whole run (for `run_batch`, of the whole batch); `ttft_s` the time
    from the run's start to its first generated token. Both are elapsed times, unlike the call sums in `Usage`.
    """

    total: Usage = field(default_factory=Usage)
    per_agent: dict[str, Usage] = field(default_factory=dict)
    per_edge: dict[str, Usage] = field(default_factory=dict)
    per_round: dict[str, Usage] = field(default_factory=dict)
    wall_time_s: float = 0.0
    ttft_s: float | None = None

    def add_call(self, agent: str, round_key: str, usage: Usage) -> None:
        self.total = self.total + usage
        self.per_agent[agent] = self.per_agent.get(agent, Usage()) + usage
        self.per_round[round_key] = self.per_round.get(round_key, Usage()) + usage

    def add_edge(self, key: str, tokens: int, cache_read: int = 0, kv_bytes: int = 0) -> None:
        edge = Usage(input_tokens=tokens, cache_read=cache_read, kv_bytes=kv_bytes)
        self.per_edge[key] = self.per_edge.get(key, Usage()) + edge

    def to_dict(self) -> dict:
        return {
            "total": self.total.to_dict(),
            "per_agent": {k: v.to_dict() for k, v in self.per_agent.items()},
            "per_edge": {k: v.to_dict() for k, v in self.per_edge.items()},
            "per_round": {k: v.to_dict() for k, v in self.per_round.items()},
            "wall_time_s": round(self.wall_time_s, 6),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
        }

    def table(self) -> str:
        """A plain-text table of tokens per agent and per edge, with totals."""
        rows = [("agent", "calls", "prompt", "completion", "cached", "total", "call seconds")]
        for name, u in self.per_agent.items():
            rows.append(
                (
                    name,
                    u.calls,
                    u.input_tokens,
                    u.output_tokens,
                    _shown(u.cache_read),
                    u.total_tokens,
                    f"{u.call_time_s:.2f}",
                )
            )
        t = self.total
        rows.append(
            (
                "TOTAL",
                t.calls,
                t.input_tokens,
                t.output_tokens,
                _shown(t.cache_read),
                t.total_tokens,
                f"{t.call_time_s:.2f}",
            )
        )
        lines = format_rows(rows)
        first = "" if self.ttft_s is None else f", first token after {self.ttft_s:.2f} s"
        lines.append(f"elapsed {self.wall_time_s:.2f} s{first} (call seconds add up calls that ran side by side)")
        if self.per_edge:
            edge_rows = [("edge", "tokens read", "cached", "KV bytes")]
            edge_rows += [(k, u.input_tokens, _shown(u.cache_read), u.kv_bytes) for k, u in self.per_edge.items()]
            lines += ["", *format_rows(edge_rows)]
        return "\n".join(lines)


def _shown(count: int | None) -> int | str:
    return "unknown" if count is None else count


def format_rows(rows: list[tuple]) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    out = []
    for n, row in enumerate(cells):
        out.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
