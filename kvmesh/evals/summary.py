"""A run's summary: metrics with 95% intervals, token statistics, configuration, seed and versions.

Everything comes from the lines in `samples.jsonl`, so a resumed run's summary covers its earlier parts too;
only the channels' state (`engine`: anchor memory, settings, and what they did in this process) comes from the
team that ran here. `load_summary`, `run_label` and `run_models` read a finished run's summary back (for tables
and plots).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kvmesh.evals.stats import mean_interval, proportion
from kvmesh.evals.store import read_samples
from kvmesh.kvcomm.channel import base_channel, channel_names, metadata_key

SAMPLE_METRICS = ("strict", "flexible", "pass@1", "f1", "answer_in_reply")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("kvmesh", "torch", "transformers", "langchain-core"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _agent_means(usages: list[dict | None]) -> dict:
    """Mean prompt, completion, cached and total tokens and model calls of one agent per task (0 where absent)."""
    n = len(usages)

    def mean(get) -> float:
        return sum(get(u) for u in usages if u) / n

    means = {
        "input_tokens": mean(lambda u: u["input_tokens"]),
        "output_tokens": mean(lambda u: u["output_tokens"]),
        "total_tokens": mean(lambda u: u["total_tokens"]),
        "calls": mean(lambda u: u["calls"]),
    }
    if all("cache_read" in u["input_token_details"] for u in usages if u):  # a server that did not say: unknown
        means["cache_read"] = mean(lambda u: u["input_token_details"]["cache_read"])
    return means


def _cache_summary(turns: list[dict], engine: dict | None) -> dict:
    """How one channel served every saved turn that had something of it to read from a cache (so it survives
    resume), plus the channel's own statistics when this process ran the team."""
    reused = [m for m in turns if m["served"] == "reused"]
    summary = {
        "turns": len(turns),
        "reused_turns": len(reused),
        "reuse_rate": len(reused) / len(turns),
        "cache_read_tokens": sum(m["usage"]["input_token_details"]["cache_read"] for m in reused),
        "prompt_tokens": sum(m["usage"]["input_tokens"] for m in turns),
    }
    if engine is not None:
        summary |= {"engine": engine}
    return summary


def _engine_stats(channels: dict, name: str) -> dict | None:
    """Channel `name`'s statistics among the team's (by instance name): its own, its one variant's, or with
    several instances each by its name."""
    found = {instance: stats for instance, stats in channels.items() if base_channel(instance) == name}
    if len(found) == 1:
        return next(iter(found.values()))
    return found or None


def _tokens(rows: list[dict]) -> dict:
    usage_rows = [r["usage"] for r in rows if "usage" in r]
    if not usage_rows:
        return {}
    tokens = {
        field: mean_interval([u["total"][field] for u in usage_rows]) for field in ("input_tokens", "output_tokens")
    }
    cached = [u["total"]["input_token_details"].get("cache_read") for u in usage_rows]
    if None not in cached:  # left out when a server did not report its cached tokens (unknown, never 0)
        tokens["cache_read"] = mean_interval(cached)
    tokens["total_tokens"] = mean_interval([u["total"]["total_tokens"] for u in usage_rows])
    agents = sorted({a for u in usage_rows for a in u["per_agent"]})
    tokens["model_calls"] = mean_interval([u["total"]["calls"] for u in usage_rows])
    # each call's own latency added up over the task's calls: the designers' time cost, and resume-safe
    tokens["call_seconds"] = mean_interval([u["total"].get("call_time_s", 0.0) for u in usage_rows])
    tokens["per_agent"] = {a: _agent_means([u["per_agent"].get(a) for u in usage_rows]) for a in agents}
    return tokens


def summarize(out: str | Path, config, seconds: float | None = None, channels: dict | None = None) -> dict:
    """Metrics with 95% intervals and token statistics over every sample in `out`; `config` is the run's
    `EvalConfig`; `channels`: the team's channel statistics by name (`Team.channel_stats()`) when it ran here."""
    rows = read_samples(out)
    if not rows:
        raise ValueError(f"{out} has no finished samples to summarize")
    n = len(rows)
    metrics = {"accuracy": proportion(sum(bool(r["correct"]) for r in rows), n)}
    for key in SAMPLE_METRICS:
        if key in rows[0]:
            values = [float(r[key]) for r in rows]
            metrics[key] = proportion(int(sum(values)), n) if key != "f1" else mean_interval(values, bounds=(0, 1))
    served = {}
    for name in channel_names():
        key = metadata_key(name)
        turns = [m | {"served": m[key]} for r in rows for m in r.get("messages", ()) if key in m]
        if turns:
            served[key] = _cache_summary(turns, _engine_stats(channels or {}, name))
    missing = sum(1 for r in rows if r.get("completion_missing"))
    return {
        "benchmark": config.benchmark,
        "samples": n,
        **({"missing_completions": missing} if config.completions else {}),
        "metrics": metrics,
        "tokens_per_task": _tokens(rows),
        **served,
        "seconds": seconds,
        "config": asdict(config),
        "seed": config.seed,
        "versions": versions(),
    }


def load_summary(run: str | Path) -> dict:
    """The summary.json of a finished run folder."""
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run} a finished `kvmesh eval` run?")
    return json.loads(path.read_text())


def run_label(summary: dict) -> str:
    """A short name for a run: its team (topology and size), designer, spec, or oracle."""
    config = summary["config"]
    if config.get("oracle"):
        return "oracle"
    if config.get("completions"):
        return "completions"
    if config.get("designer"):
        folder = Path(config["designer"])
        return f"designer {folder.parent.name if folder.name == 'designer' else folder.name}"
    if config.get("spec"):
        return Path(config["spec"]).stem
    if config["topology"] == "single":
        return "single" + (f" ({config['shards']} shards)" if config.get("shards", "own") != "own" else "")
    return f"{config['topology']} x{config['agents']}"


def run_models(summary: dict) -> str:
    """The models a run's team ran on (older summaries: the configured model); "-" when no model ran."""
    config = summary["config"]
    if config.get("oracle") or config.get("completions"):
        return "-"
    return ", ".join(summary.get("models") or [config.get("model", "-")])
