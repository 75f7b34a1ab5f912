"""Plain-text tables of evaluation summaries: one run at the end of `kvmesh eval`, several side by side.

kvmesh report runs/chain runs/complete       # or: kvmesh eval ... --compare runs/a runs/b
"""

from __future__ import annotations

import json
from pathlib import Path

from kvmesh.agents.usage import format_rows

METRIC_ORDER = ("accuracy", "strict", "flexible", "pass@1", "f1", "answer_in_reply")


def load_summary(run: str | Path) -> dict:
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run} a finished `kvmesh eval` run?")
    return json.loads(path.read_text())


def _cell(metric: dict) -> str:
    low, high = metric["ci95"]
    return f"{metric['value']:.3f} [{low:.3f}, {high:.3f}]"


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


def compare_table(runs: list[str | Path]) -> str:
    """One column per run: metrics with 95% intervals, tokens per task, time."""
    summaries = [load_summary(r) for r in runs]
    metrics = [m for m in METRIC_ORDER if any(m in s["metrics"] for s in summaries)]
    rows = [
        ("", *[str(r) for r in runs]),
        ("team", *[run_label(s) for s in summaries]),
        ("model", *[run_models(s) for s in summaries]),
        ("samples", *[str(s["samples"]) for s in summaries]),
    ]
    for metric in metrics:
        rows.append((metric, *[_cell(s["metrics"][metric]) if metric in s["metrics"] else "-" for s in summaries]))
    for field in ("input_tokens", "output_tokens", "cache_read", "total_tokens"):
        rows.append(
            (
                f"{field}/task",
                *[
                    f"{s['tokens_per_task'][field]['value']:.1f}" if field in s["tokens_per_task"] else "-"
                    for s in summaries
                ],
            )
        )
    rows.append(("seconds", *[f"{s['seconds']:.1f}" if s.get("seconds") is not None else "-" for s in summaries]))
    return "\n".join(format_rows(rows))
