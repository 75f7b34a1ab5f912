"""Pictures of evaluation runs: a run's graph (`kvmesh viz`) and the trade-off plot of several runs.

`read_picture_source` gives the graph to draw and its options from a graph JSON file or a `kvmesh eval` run
folder (graph.json, with each edge's mean tokens per task from samples.jsonl; for a designer's run, the summary
of the graphs it chose); `inline_svg` draws it for an HTML page (`kvmesh.evals.report.write_report`). A run's edge
labels are means over its tasks, so they read "24 tok/task (mean)" (`tokens_mean` of `kvmesh.graph.draw`). A graph
file that is not a JSON object holding a valid graph (edge weights numbers in [0, 1]: designer edge probabilities)
raises a GraphError that names the file and what it should hold; `kvmesh viz` prints it and exits 2.

`plot_tradeoff` draws accuracy against tokens per task, one point per topology or designer run (`Point.from_run`
reads a run folder's `summary.json`): accuracy with its 95% interval as a vertical bar, mean tokens per task
(prompt + completion, the model's own tokenizer) on the x axis. Designers are drawn as stars, fixed topologies as
circles; up and to the left is better. The legend names each point with its accuracy and tokens, since teams of
equal cost land on the same spot. Graph pictures themselves are drawn by `kvmesh.graph`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmesh.evals.store import read_samples
from kvmesh.evals.summary import run_label
from kvmesh.graph.draw import check_weights, draw
from kvmesh.graph.edge import GraphError
from kvmesh.graph.graph import CommGraph
from kvmesh.graph.pictures import designed_picture

EXPECTED = (
    'a graph file is one JSON object, {"agents": [...], "edges": [{"source": ..., "target": ...}, ...]} as '
    "CommGraph.to_json writes it (or a run's graph.json); or pass a kvmesh eval run folder"
)
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def read_picture_source(source: str | Path) -> tuple[CommGraph, dict]:
    """A graph and drawing options from a graph JSON file (`CommGraph.to_json`, or a run's `graph.json`) or an
    evaluation run folder (its `graph.json`, with each edge's mean tokens per task from `samples.jsonl`; for a
    designer's run, the summary of the graphs it chose: `kvmesh.graph.pictures.designed_picture`). A file that is
    not a valid graph raises a GraphError naming it, what is wrong and what it should hold."""
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
    edges = mean_usage(samples, "per_edge")
    if edges:
        options |= {"tokens": {key: round(tokens) for key, tokens, *_ in edges}, "tokens_mean": True}
    designed = [CommGraph.from_dict(s["graph"]) for s in samples if "graph" in s]
    if designed:  # a designer's run: what it chose over the tasks, against the team's graph
        graph, drawn = designed_picture(graph.agents, graph, designed)
        options |= drawn
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


def mean_usage(samples: list[dict], part: str) -> list[list]:
    """[key, mean input, output and cache-read tokens per task] for each agent or edge (`part`: "per_agent" or
    "per_edge"); cache-read "unknown" where a server did not say."""
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


def inline_svg(graph: CommGraph, **options) -> str:
    """The graph's SVG picture as an element to put in an HTML page (no XML prolog or doctype)."""
    with tempfile.TemporaryDirectory() as scratch:
        svg = draw(graph, Path(scratch, "graph.svg"), **options).read_text()
    return svg[svg.index("<svg") :]


@dataclass(frozen=True)
class Point:
    """One run in the trade-off plot: accuracy with its 95% interval against a cost (`tokens`, or what the
    plot's x axis measures); `designer` runs are drawn as stars."""

    name: str
    accuracy: float
    low: float
    high: float
    tokens: float
    designer: bool
    samples: int
    seconds: float | None = None  # seconds of model calls per task (`call_seconds`), when the run recorded them

    @classmethod
    def from_run(cls, folder: str | Path, name: str | None = None) -> Point:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no summary.json; finish the run (or --resume it) first")
        summary = json.loads(path.read_text())
        accuracy = summary["metrics"]["accuracy"]
        designer = bool(summary["config"].get("designer"))
        label = name or run_label(summary)
        tokens = summary["tokens_per_task"]["total_tokens"]["value"]
        low, high = accuracy["ci95"]
        calls = summary["tokens_per_task"].get("call_seconds")
        seconds = calls["value"] if calls else None
        return cls(label, accuracy["value"], low, high, tokens, designer, summary["samples"], seconds)


def plot_tradeoff(
    points: Sequence[Point],
    path: str | Path,
    title: str | None = None,
    xlabel: str = "tokens per task (prompt + completion)",
    unit: str = "tok",
) -> Path:
    """One point per run at (`Point.tokens`, accuracy); `xlabel` and `unit` name what the x axis measures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for i, point in enumerate(points):
        colour = plt.get_cmap("tab10")(i % 10)
        errors = [[max(0.0, point.accuracy - point.low)], [max(0.0, point.high - point.accuracy)]]
        marker, size = ("*", 14) if point.designer else ("o", 8)
        cost = f"{point.tokens:.0f} {unit}" if unit == "tok" else f"{point.tokens:.3g} {unit}"
        label = f"{point.name}: {point.accuracy:.3f}, {cost}"
        style = {"fmt": marker, "markersize": size, "color": colour, "capsize": 3, "label": label}
        axes.errorbar(point.tokens, point.accuracy, yerr=errors, **style)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("accuracy (95% interval)")
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best", frameon=False)  # points of equal cost sit on top of each other
    samples = sorted({p.samples for p in points})
    against = xlabel.split(" (")[0]
    axes.set_title(title or f"accuracy against {against} ({'/'.join(map(str, samples))} tasks per point)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
