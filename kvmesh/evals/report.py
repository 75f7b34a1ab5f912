"""Evaluation runs as text: plain-text tables of summaries, and one self-contained HTML page about a run.

kvmesh report runs/chain runs/complete       # compare_report; kvmesh eval --compare prints compare_table alone
kvmesh viz runs/chain -o report.html         # write_report

`compare_table` puts one run at the end of `kvmesh eval`, or several, side by side: each run's own metrics and
intervals. `compare_report` adds, for two or more runs, each run paired with the first on the task ids both
hold (`kvmesh.evals.paired`): the accuracy difference with an exact McNemar p and paired bootstrap intervals
for tokens and time, which can tell apart runs whose side-by-side intervals overlap. `write_report` writes the
page: the graph picture (inline SVG, from `kvmesh.evals.figures`), metrics, tokens per agent and per edge, and the
transcript of the first tasks. No scripts, fonts or images from anywhere else: it opens offline. Metrics and
their 95% intervals show 3 decimals on the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from kvmesh.agents.usage import format_rows
from kvmesh.evals.figures import inline_svg, mean_usage, read_picture_source
from kvmesh.evals.paired import compare_runs
from kvmesh.evals.store import read_samples
from kvmesh.evals.summary import load_summary, run_label, run_models

METRIC_ORDER = ("accuracy", "strict", "flexible", "pass@1", "f1", "answer_in_reply")
METRIC_DIGITS = 3  # the page's accuracies and their intervals: 0.395 [0.328, 0.466]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.6em; border-radius: 4px; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
"""


def _cell(metric: dict) -> str:
    low, high = metric["ci95"]
    return f"{metric['value']:.3f} [{low:.3f}, {high:.3f}]"


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


def compare_report(runs: list[str | Path], seed: int = 0) -> str:
    """`compare_table`, then (two or more runs) each run paired with the first; `seed`: the bootstrap's."""
    table = compare_table(runs)
    if len(runs) < 2:
        return table
    return f"{table}\n\n{compare_runs(runs, seed)}"


def _table(headers: list[str], rows: list[list], digits: int = 1) -> str:
    """An HTML table; floats right-aligned with `digits` decimals."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v:,.{digits}f}</td>' if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval(ci95: object) -> str:
    """A 95% interval as "[low, high]" with `METRIC_DIGITS` decimals (as the value beside it)."""
    if isinstance(ci95, list | tuple) and len(ci95) == 2 and all(isinstance(v, int | float) for v in ci95):
        return f"[{ci95[0]:.{METRIC_DIGITS}f}, {ci95[1]:.{METRIC_DIGITS}f}]"
    return "" if ci95 is None else str(ci95)


def _transcript(sample: dict) -> str:
    verdict = "correct" if sample.get("correct") else "wrong"
    parts = [f"<summary>{html.escape(str(sample.get('id')))}: {verdict}, gold {html.escape(str(sample.get('gold')))}"]
    parts.append("</summary>")
    for message in sample.get("messages", []):
        who = f"{message['agent']} · round {message['round']}"
        parts.append(f"<h4>{html.escape(who)}</h4><pre>{html.escape(message['content'])}</pre>")
    return "<details>" + "".join(parts) + "</details>"


def write_report(source: str | Path, path: str | Path, transcripts: int = 20) -> Path:
    """Write the HTML page for `source` (a run folder or a graph JSON file) to `path`."""
    source, path = Path(source), Path(path)
    graph, options = read_picture_source(source)
    svg = inline_svg(graph, **options)
    folder = source if source.is_dir() else source.parent
    summary_file, samples = folder / "summary.json", read_samples(folder)
    title = f"kvmesh run: {source.name}"
    body = [f"<h1>{html.escape(title)}</h1>", svg]
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        metrics = [[name, value["value"], _interval(value.get("ci95"))] for name, value in summary["metrics"].items()]
        body += ["<h2>Metrics</h2>", _table(["metric", "value", "95% interval"], metrics, digits=METRIC_DIGITS)]
    if samples:
        columns = ["input tokens", "output tokens", "cached"]
        body += ["<h2>Tokens per task, by agent</h2>", _table(["agent", *columns], mean_usage(samples, "per_agent"))]
        body += ["<h2>Tokens per task, by edge</h2>", _table(["edge", *columns], mean_usage(samples, "per_edge"))]
        body += [f"<h2>Transcripts (first {min(transcripts, len(samples))})</h2>"]
        body += [_transcript(sample) for sample in samples[:transcripts]]
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
