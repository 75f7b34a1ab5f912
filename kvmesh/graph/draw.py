"""Pictures and text exports of a communication graph: PNG or SVG with matplotlib, Mermaid and DOT.

Conventions shared by every format:
    spatial edges     solid arrows, left to right along the graph's levels (agents that read only earlier levels)
    temporal edges    dashed, curved arrows (round r -> round r + 1); a self-edge (an agent reading its own last
                      answer) is a small dashed loop above its node
    channels          an edge on another channel than text is drawn in that channel's colour (one per channel
                      name, variants apart: `channels` first, in its order, then the others drawn, sorted; pass a
                      designer's choices so its pictures agree) and the legend names each; in Mermaid and DOT the
                      edge is labelled with it
    decision node     a distinct shape at the right; every agent feeds it (drawn only when `decision` is named)
    pruned edges      candidate edges a designer removed: dotted and faint, so before/after reads at a glance;
                      `faint_label` renames them (a "before" picture shows unused candidates this way), and one
                      whose reverse is also drawn curves aside so both directions stay visible
    pruned agents     agents a designer left out (`pruned_agents`): faint, dashed outline, no arrow to the decision
    notes             an optional line under a node's name (`notes`), e.g. how often a designer kept it
    weights           edge width (and a label) from `Edge.weight`: a probability, e.g. a designer's edge
                      probability or the share of tasks holding the edge, so a number in [0, 1]; anything else
                      is refused with a GraphError naming the edge
    tokens            optional tokens per task on each edge, keyed like `UsageReport.per_edge` ("a->b",
                      "a->b (temporal)"): a mapping to counts, a mapping to Usage-like objects or usage dicts
                      (their `input_tokens`: the receiver's prompt tokens carrying the message), or the whole
                      report (`tokens=result.usage`). Labels read "24 tok/task"; with `tokens_mean=True` (means
                      over an evaluation run's tasks, as `kvmesh viz` draws a run) "24 tok/task (mean)"
    node ids          (Mermaid, DOT) `n_<name>` for names of ASCII letters, digits and `_`; any other name is
                      `e_` plus the name with every other character, `_` included, written `_<hex code>_`, so
                      two names never share an id

Pictures only (PNG, SVG):
    colours           one per role (`roles`, else per agent): tab10's ten, tab20's lighter ten, then evenly
                      spaced hues, so colours never repeat; the legend lists the roles and each kind of edge drawn
    fonts             names are drawn in matplotlib's default font, falling back to any installed font that has
                      the characters it lacks (CJK, emoji); when none has them, a PNG shows boxes and `draw` warns
                      naming them. SVG keeps text as text, drawn by the viewer's fonts
    wrapping          more than `MAX_COLUMNS` columns (levels, and the decision) wrap into rows that snake: the
                      next row starts under where the last one ended and runs the other way, so a long chain
                      stays about 2,300 px wide at the 150 dpi written

Caveat: the layout is by levels, not force-directed, so large graphs get crowded but stay readable along the
levels; one very wide level (e.g. a star of 40) makes a tall picture.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge, GraphError, GraphView
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL

FORMATS = (".png", ".svg")
MAX_COLUMNS = 7  # columns 2.2 in apart: 7 fit in about 2,300 px at 150 dpi


def _node_id(name: str) -> str:
    """An identifier Mermaid and DOT accept, one per agent name (see the module docstring)."""
    if all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        return "n_" + name
    # `_` is escaped too, so `_2d_` in an id can only come from "-" (a-b -> e_a_2d_b, a_2d_b -> e_a_5f_2d_5f_b)
    return "e_" + "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):x}_" for c in name)


def _text(name: str) -> str:
    """A name inside a double-quoted Mermaid or DOT label."""
    return name.replace("\\", "/").replace('"', "'")


def _node_label(name: str, notes: Mapping[str, str] | None) -> str:
    note = (notes or {}).get(name)
    return f"{name}\n{note}" if note else name


def check_weights(edges: Iterable[Edge], probabilities: bool = True) -> None:
    """Refuse an edge weight that is not a number in [0, 1]: in pictures it is a probability that sets the line's
    width. Text exports only label it, so `probabilities=False` takes any finite number there."""
    for edge in edges:
        weight = edge.weight
        if weight is None:
            continue
        number = not isinstance(weight, bool) and isinstance(weight, numbers.Real) and math.isfinite(weight)
        if not number or (probabilities and not 0 <= weight <= 1):
            raise GraphError(
                f"edge {edge.source} -> {edge.target} ({edge.kind}) has weight {weight!r}: an edge weight is a "
                f"probability (a designer's edge probability, or the share of tasks that keep the edge), a number "
                f"from 0 to 1 such as 0.8; fix it or leave the weight out"
            )


def _token_counts(tokens: object) -> dict[str, int]:
    """Edge key -> tokens per task from the forms `tokens` may take (module docstring). Duck-typed on `per_edge`
    and `input_tokens`: `UsageReport` and `Usage` live in kvmesh.agents, above this package."""
    if tokens is None:
        return {}
    table = getattr(tokens, "per_edge", tokens)
    if not isinstance(table, Mapping):
        raise TypeError(
            f"tokens must map edge keys ('a->b') to token counts or Usage objects, or be a usage report with "
            f"per_edge (tokens=result.usage); got {type(tokens).__name__}"
        )
    counts = {}
    for key, value in table.items():
        count = value.get("input_tokens") if isinstance(value, Mapping) else getattr(value, "input_tokens", value)
        if isinstance(count, bool) or not isinstance(count, numbers.Real):
            raise TypeError(f"tokens[{key!r}] is {value!r}: give a token count or a Usage with input_tokens")
        counts[key] = round(count)
    return counts


def _label(edge: Edge, counts: Mapping[str, int], mean: bool) -> str:
    parts = []
    if edge.weight is not None:
        parts.append(f"{edge.weight:.2f}")
    if (count := counts.get(edge.key)) is not None:
        parts.append(f"{count} tok/task" + (" (mean)" if mean else ""))
    return ", ".join(parts)


def to_mermaid(
    graph: GraphView,
    decision: str | None = None,
    pruned: Iterable[Edge] = (),
    tokens: object = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    faint_label: str = "pruned",
    tokens_mean: bool = False,
) -> str:
    """A Mermaid flowchart: `-->` spatial, `-.->` temporal, a dotted line without arrow head for pruned edges."""
    check_weights(graph.edges(), probabilities=False)
    counts = _token_counts(tokens)
    lines = ["flowchart LR"]
    dropped = set(pruned_agents)
    for name in graph.agents:
        lines.append(f'    {_node_id(name)}["{_text(_node_label(name, notes)).replace(chr(10), "<br/>")}"]')
    if decision:
        lines.append(f'    {_node_id(decision)}{{{{"{_text(decision)}"}}}}')
    for edge in graph.edges():
        arrow = "-->" if edge.kind == SPATIAL else "-.->"
        label = _label(edge, counts, tokens_mean) or ("next round" if edge.kind == TEMPORAL else "")
        if edge.channel != DEFAULT_CHANNEL:
            label = f"{edge.channel}, {label}" if label else edge.channel
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
    tokens: object = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    faint_label: str = "pruned",
    tokens_mean: bool = False,
) -> str:
    """A Graphviz digraph: temporal edges dashed (not used for ranking), pruned ones dotted grey."""
    check_weights(graph.edges(), probabilities=False)
    counts = _token_counts(tokens)
    lines = ["digraph team {", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    dropped = set(pruned_agents)
    for name in graph.agents:
        style = ', style="rounded,dashed", color=gray60, fontcolor=gray50' if name in dropped else ""
        label = _text(_node_label(name, notes)).replace("\n", "\\n")
        lines.append(f'    {_node_id(name)} [label="{label}"{style}];')
    if decision:
        lines.append(f'    {_node_id(decision)} [label="{_text(decision)}", shape=doubleoctagon];')
    for edge in graph.edges():
        label = _label(edge, counts, tokens_mean)
        if edge.channel != DEFAULT_CHANNEL:
            label = f"{edge.channel}, {label}" if label else edge.channel
        attributes = [f'label="{_text(label)}"']
        if edge.kind == TEMPORAL:
            attributes += ["style=dashed", "constraint=false"]
        if edge.weight is not None:
            attributes.append(f"penwidth={0.5 + 3 * max(0, min(edge.weight, 1)):.2f}")  # a label beyond [0, 1]
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
    """Agents by level, one column each, spread vertically; the decision node in a column after the last level.
    Past `MAX_COLUMNS` columns, rows that snake (module docstring), each as tall as its tallest column."""
    columns = graph.levels() + ([[decision]] if decision else [])
    positions, top = {}, 0.0
    for row, start in enumerate(range(0, len(columns), MAX_COLUMNS)):
        chunk = columns[start : start + MAX_COLUMNS]
        tallest = max(len(column) for column in chunk)
        for i, column in enumerate(chunk):
            x = i if row % 2 == 0 else MAX_COLUMNS - 1 - i
            for j, name in enumerate(column):
                positions[name] = (float(x), top - (tallest - len(column)) / 2 - j)
        top -= tallest + 0.6  # room for the names under the row's lowest nodes
    return positions


def _palette(count: int) -> list[tuple]:
    """`count` distinct colours (module docstring): tab10's ten, their lighter tab20 twins, then spaced hues."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]  # even entries are tab10's colours, odd ones their lighter twins
    colours = [tab20(i) for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    extra = max(count - len(colours), 0)
    return [*colours, *(colormaps["hsv"]((i + 0.5) / extra) for i in range(extra))][:count]


@functools.cache
def _charmap(file: str) -> frozenset[str]:
    """The characters a font file draws; none for a bitmap-only font (matplotlib cannot scale one) or a file
    fontTools cannot read."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(file, fontNumber=0, lazy=True) as font:
            if not any(table in font for table in ("glyf", "CFF ", "CFF2")):
                return frozenset()
            return frozenset(map(chr, font.getBestCmap() or {}))
    except Exception:  # a broken or unsupported font file simply covers nothing
        return frozenset()


def _fonts(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(font families for matplotlib to fall back along: the default font, then installed fonts that have the
    characters it lacks; the texts that no installed font can draw)."""
    from matplotlib import font_manager, rcParams

    primary = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    families = [font_manager.get_font(primary).family_name]
    texts = list(dict.fromkeys(texts))
    lacking = {c for text in texts for c in text if not c.isspace()} - _charmap(primary)
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda entry: entry.fname):
        if not lacking:
            break
        if entry.name.startswith("Last Resort"):  # draws a placeholder box for every character: no help
            continue
        if covered := lacking & _charmap(entry.fname):
            lacking -= covered
            families += [entry.name] if entry.name not in families else []
    return families, [text for text in texts if lacking & set(text)]


def draw(
    graph: GraphView,
    path: str | Path,
    roles: Mapping[str, str] | None = None,
    decision: str | None = None,
    pruned: Iterable[Edge] = (),
    tokens: object = None,
    title: str | None = None,
    pruned_agents: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    layout: GraphView | None = None,
    faint_label: str = "pruned",
    tokens_mean: bool = False,
    channels: Sequence[str] = (),
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
        from matplotlib.path import Path as Curve
        from matplotlib.transforms import ScaledTranslation
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install 'kvmesh[viz]'") from error

    check_weights(graph.edges())
    counts = _token_counts(tokens)
    placed = layout if layout is not None else graph
    missing = set(graph.agents) - set(placed.agents)
    if missing:
        raise ValueError(f"the layout graph lacks agents {sorted(missing)} of the graph to draw")
    positions = _positions(placed, decision)
    roles = dict(roles or {})
    groups = list(dict.fromkeys(roles.get(a, a) for a in graph.agents))
    role_colour = dict(zip(groups, _palette(len(groups)), strict=True))
    families, undrawable = _fonts([*graph.agents, *(notes or {}).values(), *groups, decision or "", title or ""])
    if undrawable and path.suffix.lower() == ".png":
        warnings.warn(
            f"no installed font has every character of {undrawable}, so the PNG shows boxes for them; install a "
            f"font that has them (e.g. Noto Sans CJK for Chinese, Japanese and Korean, Noto Emoji for emoji), or "
            f"write .svg (its text is drawn by the viewer's fonts), .mmd or .dot",
            stacklevel=2,
        )
    xs, ys = zip(*positions.values(), strict=True)
    width = max(4.0, 2.2 * (max(xs) + 1))
    height = max(3.0, 1.4 * (max(ys) - min(ys) + 1) + 1)
    # matplotlib warns per missing glyph; the warning above says it once, with names and a fix
    with warnings.catch_warnings(), matplotlib.rc_context({"font.family": families, "svg.fonttype": "none"}):
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
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

        def connect(source, target, rad: float, kind: str, **style) -> None:
            """An arrow, or for a self-edge (an arrow from a point to itself draws nothing) a loop above the node,
            in inches from its centre so it keeps its size at any scale. The SVG id names the edge."""
            if source == target:
                loop = [(-0.13, 0.24), (-0.45, 0.75), (0.45, 0.75), (0.13, 0.24)]  # from the rim, up and back
                where = figure.dpi_scale_trans + ScaledTranslation(*positions[source], axes.transData)
                curve = Curve(loop, [Curve.MOVETO, *[Curve.CURVE4] * 3])
                ends = {"path": curve, "transform": where, "mutation_scale": 10}
            else:
                ends = {"posA": positions[source], "posB": positions[target], "connectionstyle": f"arc3,rad={rad}"}
                ends |= {"mutation_scale": 14, "shrinkA": 22, "shrinkB": 22}  # stop at the nodes' rims
            gid = f"{kind}-{_node_id(source)}-{_node_id(target)}"
            axes.add_patch(FancyArrowPatch(**ends, arrowstyle="-|>", gid=gid, **style))

        pruned = list(pruned)
        drawn = {(e.source, e.target) for e in graph.edges(SPATIAL)} | {(e.source, e.target) for e in pruned}
        for edge in pruned:
            aside = edge.kind == SPATIAL and (edge.target, edge.source) in drawn  # a→b and b→a: two arcs
            rad = 0.3 if aside else bend(edge.source, edge.target, -0.45)
            style = {"color": "0.6", "alpha": 0.45, "linestyle": ":", "linewidth": 1.0}
            connect(edge.source, edge.target, rad, f"{faint_label}-{edge.kind}", **style)
        channel_colour = _channel_colours(graph, channels)
        for edge in graph.edges():
            weight = 1.0 if edge.weight is None else edge.weight
            rad = 0.35 if edge.kind == TEMPORAL else bend(edge.source, edge.target, -0.45)
            style = {"color": "0.15", "linewidth": 0.6 + 2.6 * weight}
            if edge.kind == TEMPORAL:
                style |= {"color": "tab:purple", "linestyle": "--"}
            if edge.channel in channel_colour:
                style["color"] = channel_colour[edge.channel]
            connect(edge.source, edge.target, rad, edge.kind, **style)
            if not (label := _label(edge, counts, tokens_mean)):
                continue
            (x0, y0), (x1, y1) = positions[edge.source], positions[edge.target]
            middle = ((x0 + x1) / 2 + rad / 2 * (y1 - y0), (y0 + y1) / 2 - rad / 2 * (x1 - x0) + 0.08)
            above = {"xytext": (0, 48), "textcoords": "offset points"} if edge.source == edge.target else {}
            axes.annotate(label, middle, fontsize=7, ha="center", color="0.25", **above)
        dropped = set(pruned_agents)
        if decision:
            for name in graph.agents:
                if name not in dropped:
                    connect(name, decision, bend(name, decision, 0.3), "decision", color="0.55", linewidth=0.8)
        for name in graph.agents:
            x, y = positions[name]
            faint = {"alpha": 0.3, "linestyles": "--"} if name in dropped else {}
            colour = role_colour[roles.get(name, name)]
            axes.scatter(
                [x], [y], s=1400, color=colour, edgecolors="black", zorder=3, gid=f"node-{_node_id(name)}", **faint
            )
            label = _node_label(name, notes) + (" (pruned)" if name in dropped else "")
            axes.annotate(label, (x, y - 0.32), ha="center", va="top", fontsize=8, alpha=0.5 if name in dropped else 1)
        if decision:
            x, y = positions[decision]
            axes.scatter([x], [y], s=1600, marker="h", color="gold", edgecolors="black", zorder=3)
            axes.annotate(decision, (x, y - 0.32), ha="center", va="top", fontsize=8)
        _legend(
            axes, graph, role_colour if roles else {}, decision, faint_label if pruned else None, width, channel_colour
        )
        axes.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
        axes.set_ylim(min(ys) - 0.8, max(ys) + 0.6)
        axes.set_axis_off()
        if title:
            axes.set_title(title, fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=150, bbox_inches="tight")  # the whole legend, however wide
        plt.close(figure)
    return path


CHANNEL_COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:orange", "tab:cyan", "tab:brown", "tab:pink", "tab:olive")


def _channel_colours(graph: GraphView, order: Sequence[str] = ()) -> dict[str, str]:
    """A colour for each channel other than text that the graph's edges use: the `order` channels' by their place
    in it, then the rest's in sorted order after them (cycling)."""
    drawn = {edge.channel for edge in graph.edges()} - {DEFAULT_CHANNEL}
    ranked = [name for name in dict.fromkeys(order) if name != DEFAULT_CHANNEL]
    ranked += sorted(drawn - set(ranked))
    return {name: CHANNEL_COLOURS[i % len(CHANNEL_COLOURS)] for i, name in enumerate(ranked) if name in drawn}


def _legend(
    axes,
    graph: GraphView,
    role_colour: Mapping[str, tuple],
    decision: str | None,
    faint: str | None,
    width: float,
    colours: Mapping[str, str],
) -> None:
    """Under the picture: the roles, then each kind of line drawn (spatial, temporal, decision, pruned), in as
    many columns as fit the picture's `width` (inches; an entry takes about 2)."""
    for role, colour in role_colour.items():
        axes.scatter([], [], color=colour, label=role)
    kinds = {edge.kind for edge in graph.edges()}
    text = "text " if colours else ""  # name the text channel only beside others
    if SPATIAL in kinds:
        axes.plot([], [], color="0.15", label=f"{text}spatial edge (same round)")
    if TEMPORAL in kinds:
        axes.plot([], [], color="tab:purple", linestyle="--", label=f"{text}temporal edge (next round)")
    for channel, colour in colours.items():
        axes.plot([], [], color=colour, linewidth=2.0, label=f"{channel} edge")
    if decision:
        axes.plot([], [], color="0.55", linewidth=0.8, label=f"read by {decision}")
    if faint:
        axes.plot([], [], color="0.6", linestyle=":", label=f"{faint} edge")
    if entries := len(axes.get_legend_handles_labels()[1]):
        axes.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, 0),
            ncol=min(entries, max(int(width // 2), 1)),
            fontsize=7,
            frameon=False,
        )


TEXT_FORMATS = {".mmd": to_mermaid, ".dot": to_dot}


def write_picture(graph: GraphView, path: str | Path, **options) -> Path:
    """Write `graph` in the format its suffix names: .png or .svg (a picture), .mmd (Mermaid) or .dot."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS:
        for visual in ("roles", "title", "layout", "channels"):  # text formats carry no colours, title or layout
            options.pop(visual, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TEXT_FORMATS[suffix](graph, **options))
        return path
    if suffix not in FORMATS:
        known = ", ".join([*FORMATS, *TEXT_FORMATS])
        raise ValueError(f"cannot tell the format of {path.name!r} from its suffix; use one of {known}")
    return draw(graph, path, **options)
