"""Pictures and text exports of a communication graph: PNG or SVG with matplotlib, Mermaid and DOT.

Conventions shared by every format:
    spatial edges     solid arrows, left to right along the graph's levels (agents that read only earlier levels)
    temporal edges    dashed, curved arrows (round r -> round r + 1)
    decision node     a distinct shape at the right; every agent feeds it (drawn only when `decision` is named)
    pruned edges      candidate edges a designer removed: dotted and faint, so before/after reads at a glance;
                      `faint_label` renames them (a "before" picture shows unused candidates this way), and one
                      whose reverse is also drawn curves aside so both directions stay visible
    pruned agents     agents a designer left out (`pruned_agents`): faint, dashed outline, no arrow to the decision
    notes             an optional line under a node's name (`notes`), e.g. how often a designer kept it
    weights           edge width (and a label) from `Edge.weight`, e.g. a designer's edge probability
    tokens            optional per-edge token counts from a run, keyed like `UsageReport.per_edge`

Caveat: the layout is by levels, not force-directed, so large graphs get crowded but stay readable left to right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge, GraphView, edge_key

FORMATS = (".png", ".svg")


def _node_id(name: str) -> str:
    """An identifier Mermaid and DOT accept for any agent name."""
    return "n_" + "".join(c if c.isalnum() or c == "_" else f"_{ord(c):x}_" for c in name)


def _text(name: str) -> str:
    """A name inside a double-quoted Mermaid or DOT label."""
    return name.replace("\\", "/").replace('"', "'")


def _node_label(name: str, notes: Mapping[str, str] | None) -> str:
    note = (notes or {}).get(name)
    return f"{name}\n{note}" if note else name


def _label(edge: Edge, tokens: Mapping[str, int] | None) -> str:
    parts = []
    if edge.weight is not None:
        parts.append(f"{edge.weight:.2f}")
    if tokens and (count := tokens.get(edge_key(edge.source, edge.target, edge.kind))) is not None:
        parts.append(f"{count} tok")
    return ", ".join(parts)


def to_mermaid(
    graph: GraphView,
    decision: str | None = None,
    pruned: Iterable[Edge] = (),
    tokens: Mapping[str, int] | None = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    faint_label: str = "pruned",
) -> str:
    """A Mermaid flowchart: `-->` spatial, `-.->` temporal, a dotted line without arrow head for pruned edges."""
    lines = ["flowchart LR"]
    dropped = set(pruned_agents)
    for name in graph.agents:
        lines.append(f'    {_node_id(name)}["{_text(_node_label(name, notes)).replace(chr(10), "<br/>")}"]')
    if decision:
        lines.append(f'    {_node_id(decision)}{{{{"{_text(decision)}"}}}}')
    for edge in graph.edges():
        arrow = "-->" if edge.kind == SPATIAL else "-.->"
        label = _label(edge, tokens) or ("next round" if edge.kind == TEMPORAL else "")
        link = f'{arrow}|"{label}"|' if label else arrow
        lines.append(f"    {_node_id(edge.source)} {link} {_node_id(edge.target)}")
    for edge in pruned:
        lines.append(f"    {_node_id(edge.source)} -. {faint_label} .- {_node_id(edge.target)}")
    if decision:
        for name in graph.agents:
            if name not in dropped:
                lines.append(f"    {_node_id(name)} --> {_node_id(decision)}")
    if dropped:
        lines.append("    classDef pruned stroke-dasharray: 4 4,opacity:0.45")
        lines.append(f"    class {','.join(_node_id(n) for n in graph.agents if n in dropped)} pruned")
    return "\n".join(lines) + "\n"


def to_dot(
    graph: GraphView,
    decision: str | None = None,
    pruned: Iterable[Edge] = (),
    tokens: Mapping[str, int] | None = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    faint_label: str = "pruned",
) -> str:
    """A Graphviz digraph: temporal edges dashed (not used for ranking), pruned ones dotted grey."""
    lines = ["digraph team {", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    dropped = set(pruned_agents)
    for name in graph.agents:
        style = ', style="rounded,dashed", color=gray60, fontcolor=gray50' if name in dropped else ""
        label = _text(_node_label(name, notes)).replace("\n", "\\n")
        lines.append(f'    {_node_id(name)} [label="{label}"{style}];')
    if decision:
        lines.append(f'    {_node_id(decision)} [label="{_text(decision)}", shape=doubleoctagon];')
    for edge in graph.edges():
        attributes = [f'label="{_label(edge, tokens)}"']
        if edge.kind == TEMPORAL:
            attributes += ["style=dashed", "constraint=false"]
        if edge.weight is not None:
            attributes.append(f"penwidth={0.5 + 3 * edge.weight:.2f}")
        lines.append(f"    {_node_id(edge.source)} -> {_node_id(edge.target)} [{', '.join(attributes)}];")
    faint = f'style=dotted, color=gray70, label="{_text(faint_label)}"'
    for edge in pruned:
        lines.append(f"    {_node_id(edge.source)} -> {_node_id(edge.target)} [{faint}];")
    if decision:
        for name in graph.agents:
            if name not in dropped:
                lines.append(f"    {_node_id(name)} -> {_node_id(decision)} [color=gray40];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _positions(graph: GraphView, decision: str | None) -> dict[str, tuple[float, float]]:
    """Agents by level, left to right, spread vertically; the decision node after the last level."""
    levels = graph.levels()
    positions = {}
    for x, level in enumerate(levels):
        for i, name in enumerate(level):
            positions[name] = (float(x), (len(level) - 1) / 2 - i)
    if decision:
        positions[decision] = (float(len(levels)), 0.0)
    return positions


def draw(
    graph: GraphView,
    path: str | Path,
    roles: Mapping[str, str] | None = None,
    decision: str | None = None,
    pruned: Iterable[Edge] = (),
    tokens: Mapping[str, int] | None = None,
    title: str | None = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    layout: GraphView | None = None,
    faint_label: str = "pruned",
) -> Path:
    """Write the graph as PNG or SVG (by suffix); nodes coloured by `roles` (agent -> role). Returns the path.
    `layout`: place the nodes as in this graph's picture (the "before" of a designer), so pictures line up."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"draw writes {' or '.join(FORMATS)} files, got {path.name!r}; use to_mermaid/to_dot for text")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install 'kvmesh[viz]'") from error

    placed = layout if layout is not None else graph
    missing = set(graph.agents) - set(placed.agents)
    if missing:
        raise ValueError(f"the layout graph lacks agents {sorted(missing)} of the graph to draw")
    positions = _positions(placed, decision)
    roles = dict(roles or {})
    palette = plt.get_cmap("tab10")
    role_colour = {role: palette(i % 10) for i, role in enumerate(dict.fromkeys(roles.get(a, a) for a in graph.agents))}
    width = max(4.0, 2.2 * (max(x for x, _ in positions.values()) + 1))
    height = max(3.0, 1.4 * max(len(level) for level in placed.levels()) + 1)
    figure, axes = plt.subplots(figsize=(width, height))

    def bend(source, target, rad: float) -> float:
        """`rad` when the straight line would run through another node (a skipped level), else 0."""
        (x0, y0), (x1, y1) = positions[source], positions[target]
        length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
        for name, (x, y) in positions.items():
            along = ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / length**2
            if name not in (source, target) and 0 < along < 1:
                off = abs((x - x0) * (y1 - y0) - (y - y0) * (x1 - x0)) / length
                if off < 0.3:
                    return rad
        return 0.0

    def arrow(source, target, **style):
        axes.add_patch(
            FancyArrowPatch(
                positions[source],
                positions[target],
                arrowstyle="-|>",
                mutation_scale=14,
                shrinkA=22,
                shrinkB=22,
                **style,
            )
        )

    pruned = list(pruned)
    drawn = {(e.source, e.target) for e in graph.edges(SPATIAL)} | {(e.source, e.target) for e in pruned}
    for edge in pruned:
        aside = edge.kind == SPATIAL and (edge.target, edge.source) in drawn  # a→b and b→a: two arcs, not one line
        rad = 0.3 if aside else bend(edge.source, edge.target, -0.45)
        style = {"color": "0.6", "alpha": 0.45, "linestyle": ":", "linewidth": 1.0}
        arrow(edge.source, edge.target, connectionstyle=f"arc3,rad={rad}", **style)
    for edge in graph.edges():
        weight = 1.0 if edge.weight is None else edge.weight
        rad = 0.35 if edge.kind == TEMPORAL else bend(edge.source, edge.target, -0.45)
        style = {"color": "0.15", "linewidth": 0.6 + 2.6 * weight, "connectionstyle": f"arc3,rad={rad}"}
        if edge.kind == TEMPORAL:
            style |= {"color": "tab:purple", "linestyle": "--"}
        arrow(edge.source, edge.target, **style)
        if label := _label(edge, tokens):
            (x0, y0), (x1, y1) = positions[edge.source], positions[edge.target]
            middle = ((x0 + x1) / 2 + rad / 2 * (y1 - y0), (y0 + y1) / 2 - rad / 2 * (x1 - x0) + 0.08)
            axes.annotate(label, middle, fontsize=7, ha="center", color="0.25")
    dropped = set(pruned_agents)
    if decision:
        for name in graph.agents:
            if name not in dropped:
                rad = bend(name, decision, 0.3)
                arrow(name, decision, color="0.55", linewidth=0.8, connectionstyle=f"arc3,rad={rad}")
    for name in graph.agents:
        x, y = positions[name]
        colour = role_colour[roles.get(name, name)]
        faint = {"alpha": 0.3, "linestyles": "--"} if name in dropped else {}
        axes.scatter([x], [y], s=1400, color=colour, edgecolors="black", zorder=3, **faint)
        label = _node_label(name, notes) + (" (pruned)" if name in dropped else "")
        axes.annotate(label, (x, y - 0.32), ha="center", va="top", fontsize=8, alpha=0.5 if name in dropped else 1)
    if decision:
        x, y = positions[decision]
        axes.scatter([x], [y], s=1600, marker="h", color="gold", edgecolors="black", zorder=3)
        axes.annotate(decision, (x, y - 0.32), ha="center", va="top", fontsize=8)
    for role, colour in role_colour.items():
        axes.scatter([], [], color=colour, label=role)
    if pruned:
        axes.plot([], [], color="0.6", linestyle=":", label=f"{faint_label} edge")
    if len(role_colour) > 1 or pruned:
        axes.legend(loc="upper left", fontsize=7, frameon=False)
    xs, ys = zip(*positions.values(), strict=True)
    axes.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    axes.set_ylim(min(ys) - 0.8, max(ys) + 0.6)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


TEXT_FORMATS = {".mmd": to_mermaid, ".dot": to_dot}


def write_picture(graph: GraphView, path: str | Path, **options) -> Path:
    """Write `graph` in the format its suffix names: .png or .svg (a picture), .mmd (Mermaid) or .dot."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS:
        for visual in ("roles", "title", "layout"):  # text formats carry no colours, title or layout
            options.pop(visual, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TEXT_FORMATS[suffix](graph, **options))
        return path
    if suffix not in FORMATS:
        known = ", ".join([*FORMATS, *TEXT_FORMATS])
        raise ValueError(f"cannot tell the format of {path.name!r} from its suffix; use one of {known}")
    return draw(graph, path, **options)
