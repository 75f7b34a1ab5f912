"""The trade-off plot: accuracy against tokens per task, one point per topology or designer run.

Points come from run folders of `kvmesh eval` / `kvmesh design eval` (their `summary.json`): accuracy with
its 95% interval as a vertical bar, mean tokens per task (prompt + completion, the model's own tokenizer) on
the x axis. Designers are drawn as stars, fixed topologies as circles; up and to the left is better. The
legend names each point with its accuracy and tokens, since teams of equal cost land on the same spot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmesh.evals.report import run_label


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float
    low: float
    high: float
    tokens: float
    designer: bool
    samples: int

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
        return cls(label, accuracy["value"], low, high, tokens, designer, summary["samples"])


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
