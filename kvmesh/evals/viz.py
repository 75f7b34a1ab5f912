"""`kvmesh viz`: a run's graph as a picture, or one self-contained HTML page about the run.

`read_picture_source` gives the graph to draw and its options from a graph JSON file or a `kvmesh eval` run
folder (graph.json, with each edge's mean tokens per task from samples.jsonl; for a designer's run, the summary
of the graphs it chose). `write_report` writes the page: the graph picture (inline SVG), tokens per agent and
per edge, and the transcript of the first tasks. No scripts, fonts or images from anywhere else: it opens
offline.

A run's edge labels are means over its tasks, so they read "24 tok/task (mean)" (`tokens_mean` of
`kvmesh.graph.draw`). Metrics and their 95% intervals show 3 decimals. A graph file that is not a JSON object
holding a valid graph (edge weights numbers in [0, 1]: designer edge probabilities) raises a GraphError that names
the file and what it should hold; `kvmesh viz` prints it and exits 2.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path

from kvmesh.evals.store import read_samples
from kvmesh.graph.draw import check_weights, draw
from kvmesh.graph.edge import GraphError
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.summary import missing_edges, summary_graph, summary_options

EXPECTED = (
    'a graph file is one JSON object, {"agents": [...], "edges": [{"source": ..., "target": ...}, ...]} as '
    "CommGraph.to_json writes it (or a run's graph.json); or pass a kvmesh eval run folder"
)
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
METRIC_DIGITS = 3  # accuracies and their intervals: 0.395 [0.328, 0.466]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 0.6em; border-radius: 4px; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
"""


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


def read_picture_source(source: str | Path) -> tuple[CommGraph, dict]:
    """A graph and drawing options from a graph JSON file (`CommGraph.to_json`, or a run's `graph.json`) or an
    evaluation run folder (its `graph.json`, with each edge's mean tokens per task from `samples.jsonl`; for a
    designer's run, the summary of the graphs it chose: `kvmesh.graph.summary.summary_graph`). A file that is not
    a valid graph raises a GraphError naming it, what is wrong and what it should hold."""
    source = Path(source)
    file = source / "graph.json" if source.is_dir() else source
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; pass a graph JSON file or a run folder holding graph.json")
    data = _read_graph_file(file)
    options = {"decision": data.get("decision"), "roles": data.get("roles")}
    try:
        graph = CommGraph.from_dict(data.get("graph", data))
        check_weights(graph.edges())
    except (GraphError, TypeError) as error:  # TypeError: e.g. "edges" not a list
        raise GraphError(f"{file}: {error}") from error
    samples = read_samples(file.parent) if source.is_dir() else []
    edges = _mean_usage(samples, "per_edge")
    if edges:
        options |= {"tokens": {key: round(tokens) for key, tokens, *_ in edges}, "tokens_mean": True}
    designed = [CommGraph.from_dict(s["graph"]) for s in samples if "graph" in s]
    if designed:  # a designer's run: what it chose over the tasks, against the team's graph
        chosen, kept = summary_graph(graph.agents, designed)
        options |= {"pruned": missing_edges(graph.edges(), chosen), "layout": graph, **summary_options(kept)}
        graph = chosen
    return graph, options


def _read_graph_file(file: Path) -> dict:
    """The JSON object in `file`, its `roles` and `decision` checked; a GraphError naming the file otherwise."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise GraphError(
            f"{file} is not JSON ({error.msg} at line {error.lineno}, column {error.colno}); {EXPECTED}"
        ) from error
    except UnicodeDecodeError as error:
        raise GraphError(f"{file} is not JSON (not UTF-8 text: {error.reason}); {EXPECTED}") from error
    if not isinstance(data, dict):
        raise GraphError(
            f"{file} holds a JSON {JSON_TYPES.get(type(data), type(data).__name__)}, not a graph; {EXPECTED}"
        )
    roles, decision = data.get("roles"), data.get("decision")
    if roles is not None and not (isinstance(roles, dict) and all(isinstance(r, str) for r in roles.values())):
        raise GraphError(
            f'{file}: "roles" must map agent names to role names, e.g. {{"solver": "math"}}; got {roles!r}'
        )
    if decision is not None and not isinstance(decision, str):
        raise GraphError(f'{file}: "decision" must be the decision maker\'s name, got {decision!r}')
    return data


def _mean_usage(samples: list[dict], part: str) -> list[list]:
    """[key, mean input, output and cache-read tokens per task] for each agent or edge."""
    usages = [s["usage"][part] for s in samples if s.get("usage")]
    keys = sorted({key for usage in usages for key in usage})
    rows = []
    for key in keys:
        seen = [u[key] for u in usages if key in u]
        mean = [sum(u.get(f, 0) for u in seen) / len(usages) for f in ("input_tokens", "output_tokens")]
        counts = [u.get("input_token_details", {}).get("cache_read") for u in seen]
        cached = "unknown" if None in counts else sum(counts) / len(usages)  # a server that did not say
        rows.append([key, *mean, cached])
    return rows


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
    with tempfile.TemporaryDirectory() as scratch:
        svg = draw(graph, Path(scratch, "graph.svg"), **options).read_text()
    svg = svg[svg.index("<svg") :]  # inline: drop the XML prolog and doctype
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
        body += ["<h2>Tokens per task, by agent</h2>", _table(["agent", *columns], _mean_usage(samples, "per_agent"))]
        body += ["<h2>Tokens per task, by edge</h2>", _table(["edge", *columns], _mean_usage(samples, "per_edge"))]
        body += [f"<h2>Transcripts (first {min(transcripts, len(samples))})</h2>"]
        body += [_transcript(sample) for sample in samples[:transcripts]]
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
