"""`kvmesh bench latent`'s report: one row per mode, paired with the text relay, as a table, a plot and per-seed
figures (the study itself runs in `latent.py`).

    rows = mode_rows(timings, figures, ids)     # seconds over the rounds, ratios per round, accuracy paired with text
    print("\n".join(format_table(report)))
    seed_figures(report)                        # flat figures for `kvmesh.evals.seeds`
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvmesh.agents.usage import format_rows
from kvmesh.evals.paired import paired_comparison
from kvmesh.evals.timing import Spread, Timings, format_spread

REFERENCE = "text"  # the mode every other mode's time is divided by, round by round, and accuracy paired with


def paired_with_text(figures: dict[str, dict], ids: Sequence[str]) -> dict[str, dict]:
    """Each mode's accuracy against the text relay's on the same tasks: the paired difference (mode - text) with
    its bootstrap interval, the tasks only one of them solved and the exact McNemar p."""
    if REFERENCE not in figures or "correct" not in figures[REFERENCE]:
        return {}
    lines = {
        name: [{"id": i, "correct": c} for i, c in zip(ids, f["correct"], strict=True)] for name, f in figures.items()
    }
    paired = {}
    for name in figures:
        if name == REFERENCE:
            continue
        c = paired_comparison(lines[REFERENCE], lines[name], names=(REFERENCE, name))
        paired[name] = {
            "difference": c["accuracy_difference"]["value"],
            "ci95": c["accuracy_difference"]["ci95"],
            "only_text": c["discordant"]["only_reference"],
            "only_mode": c["discordant"]["only_other"],
            "mcnemar_p": c["mcnemar_p"],
        }
    return paired


def mode_rows(timings: Timings, figures: dict[str, dict], ids: Sequence[str]) -> list[dict]:
    """One row per mode timed: its figures (`figures`: the last round's) with seconds per task over the rounds
    (median, min, max, and each round's whole time), the time relative to the text relay taken per round (when
    text ran), its accuracy paired with text's on the same tasks (`ids`), and whether every round's outputs had
    the same fingerprint."""
    summary = timings.summary(REFERENCE if REFERENCE in timings.modes else None)
    paired, tasks = paired_with_text(figures, ids), len(ids)
    rows = []
    for name in timings.modes:
        per_task = Spread(**summary[name]["seconds"]).scaled(1 / tasks)
        row = {
            "name": name,
            **{key: value for key, value in figures[name].items() if key != "correct"},
            "seconds_per_task": per_task.median,
            "seconds_per_task_range": [per_task.min, per_task.max],
            "seconds_per_round": summary[name]["rounds"],
            "outputs_agree": timings.agree(name),
        }
        if "ratio" in summary[name]:
            row |= {"vs_text": summary[name]["ratio"], "vs_text_per_round": summary[name]["ratios"]}
        if name in paired:
            row["paired_vs_text"] = paired[name]
        rows.append(row)
    return rows


def format_table(report: dict) -> list[str]:
    """The report as table lines: one row per mode (every mode run), times as median (min-max) over the rounds."""
    header = ("mode", "accuracy", "95% interval", f"- {REFERENCE} (McNemar p)", "s/task", f"vs {REFERENCE}")
    header += ("generated", "KV bytes", "same outputs")
    rows = [header]
    for m in report["modes"]:
        low, high = m["ci95"]
        seconds = Spread(m["seconds_per_task"], *m["seconds_per_task_range"])
        rows.append(
            (
                m["name"],
                f"{m['accuracy']:.3f}",
                f"[{low:.3f}, {high:.3f}]",
                _paired_cell(m.get("paired_vs_text")),
                format_spread(seconds),
                format_spread(m["vs_text"], digits=2) if "vs_text" in m else "-",
                f"{m['generated_tokens']:.1f}",
                f"{m['kv_bytes']:.0f}",
                {True: "yes", False: "NO", None: "-"}[m["outputs_agree"]],
            )
        )
    tail = f"{report['tasks']} tasks, {report['repeats']} rounds (median (min-max)); vs {REFERENCE}: per round"
    return [*format_rows(rows), tail + (f"; plot: {report['plot']}" if "plot" in report else "")]


def seed_figures(report: dict) -> dict[str, float]:
    """One seed's figures, flat, for `kvmesh.evals.seeds`: each mode's accuracy, median seconds per task, median
    time against text and paired accuracy difference from text."""
    figures = {}
    for m in report["modes"]:
        figures[f"{m['name']}/accuracy"] = m["accuracy"]
        figures[f"{m['name']}/seconds_per_task"] = m["seconds_per_task"]
        if "vs_text" in m:
            figures[f"{m['name']}/vs_text"] = m["vs_text"]["median"]
        if "paired_vs_text" in m:
            figures[f"{m['name']}/accuracy_minus_text"] = m["paired_vs_text"]["difference"]
    return figures


def _paired_cell(paired: dict | None) -> str:
    return "-" if paired is None else f"{paired['difference']:+.3f} (p={paired['mcnemar_p']:.2g})"


def plot_modes(modes: Sequence[dict], path: Path) -> Path:
    """Accuracy (95% interval) against seconds per task (the median over rounds), one point per mode."""
    from kvmesh.evals.figures import Point, plot_tradeoff

    points = [
        Point(m["name"], m["accuracy"], *m["ci95"], m["seconds_per_task"], m["name"] == "skyline", m["tasks"])
        for m in modes
    ]
    return plot_tradeoff(
        points, path, xlabel="seconds per task (median of rounds; batched, sender and receiver)", unit="s"
    )


# --- resuming ---------------------------------------------------------------------------------------------------
