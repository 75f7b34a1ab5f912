"""Pictures and exports of a graph: PNG and SVG files open, DOT parses, Mermaid holds every node and edge."""

import json
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pydot
import pytest
from fontTools.ttLib import TTFont
from matplotlib import font_manager

from kvmesh import CommGraph
from kvmesh.agents.usage import Usage, UsageReport
from kvmesh.graph import Edge
from kvmesh.graph.draw import write_picture
from kvmesh.graph.edge import GraphError

GRAPH = CommGraph(
    ["solver", "critic", "judge"],
    [Edge("solver", "critic", weight=0.9), Edge("critic", "judge", weight=0.4), Edge("judge", "solver", "temporal")],
)
PRUNED = [Edge("solver", "judge")]
TOKENS = {"solver->critic": 42}
SVG = "{http://www.w3.org/2000/svg}"


def svg_groups(path: Path) -> dict[str, ET.Element]:
    """The SVG's groups by id: draw() names each edge `kind-source-target` and each node `node-<id>`."""
    return {g.get("id"): g for g in ET.parse(path).iter(f"{SVG}g") if g.get("id")}


def svg_texts(path: Path) -> dict[str, str]:
    """Each text drawn in the SVG -> its style (SVG keeps text as text)."""
    return {"".join(t.itertext()): t.get("style") for t in ET.parse(path).iter(f"{SVG}text")}


def test_png_and_svg_files_open(tmp_path):
    roles = {"solver": "math", "critic": "check", "judge": "check"}
    png = GRAPH.draw(tmp_path / "g.png", roles=roles, decision="decision", pruned=PRUNED, tokens=TOKENS)
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    svg = GRAPH.draw(tmp_path / "g.svg", decision="decision", title="chain")
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_dot_parses_with_every_node_and_edge_styled():
    dot = GRAPH.to_dot(decision="decision", pruned=PRUNED, tokens=TOKENS)
    (parsed,) = pydot.graph_from_dot_data(dot)
    assert {n.get_name() for n in parsed.get_nodes()} >= {"n_solver", "n_critic", "n_judge", "n_decision"}
    styles = {(e.get_source(), e.get_destination()): e.get("style") for e in parsed.get_edges()}
    assert styles[("n_judge", "n_solver")] == "dashed" and styles[("n_solver", "n_judge")] == "dotted"
    assert len(parsed.get_edges()) == 3 + 1 + 3  # graph edges, the pruned one, three into the decision
    assert '"0.90, 42 tok/task"' in dot


def test_mermaid_lists_nodes_and_edges_by_kind():
    text = GRAPH.to_mermaid(decision="decision", pruned=PRUNED, tokens=TOKENS)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    n_solver -->|"0.90, 42 tok/task"| n_critic' in lines
    assert '    n_judge -.->|"next round"| n_solver' in lines
    assert "    n_solver -. pruned .- n_judge" in lines
    assert '    n_decision{{"decision"}}' in lines


def test_odd_names_stay_valid_identifiers():
    graph = CommGraph(['agent "one"', "agent-2"], [('agent "one"', "agent-2")])
    (parsed,) = pydot.graph_from_dot_data(graph.to_dot())
    assert len(parsed.get_nodes()) >= 2 and len(parsed.get_edges()) == 1


def test_unknown_picture_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"png or \.svg"):
        GRAPH.draw(tmp_path / "g.jpg")


def test_the_html_report_of_a_run_needs_no_network(tmp_path):
    import re

    from kvmesh.evals.report import write_report
    from kvmesh.evals.runner import EvalConfig, run_eval

    config = EvalConfig("infoqa", model="tiny-random", limit=3, max_new_tokens=4, agents=2)
    run_eval(config, tmp_path / "run", progress=False)
    page = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "<svg" in page and "Tokens per task, by edge" in page and "agent_1-&gt;agent_2" in page
    assert page.count("<details>") == 3  # one transcript per task
    assert not re.search(r"<script|<link|<img|<iframe|src=|url\((?!#)", page)  # url(#clip) stays inside
    assert all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', page))  # only links inside the page


COLLIDE = CommGraph(["a-b", "a_2d_b"], [("a-b", "a_2d_b")])  # the old ids were n_a_2d_b for both
CJK = CommGraph(["研究员", "critic🦜"], [("研究员", "critic🦜"), ("研究员", "研究员", "temporal")])
MERMAID = Path(__file__).parents[1] / "mermaid"


def mermaid_parse(tmp_path, texts: dict[str, str]) -> dict[str, dict]:
    """Parse with Mermaid's own parser (Node.js, installed by `make setup` into tests/mermaid)."""
    if shutil.which("node") is None or not (MERMAID / "node_modules" / "mermaid").is_dir():
        pytest.skip("Mermaid's parser needs Node.js and `make setup` (npm ci in tests/mermaid)")
    files = []
    for name, text in texts.items():
        files.append(tmp_path / f"{name}.mmd")
        files[-1].write_text(text)
    done = subprocess.run(
        ["node", str(MERMAID / "parse.mjs"), *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {Path(row["file"]).stem: row for row in map(json.loads, done.stdout.splitlines())}


def test_mermaid_exports_parse_with_mermaid_itself(tmp_path):
    odd = CommGraph(['agent "one"', "agent-2", "3rd agent"], [('agent "one"', "agent-2", "spatial", "text", 0.5)])
    texts = {
        "plain": GRAPH.to_mermaid(),
        "full": GRAPH.to_mermaid(decision="decision", pruned=PRUNED, tokens=TOKENS),
        "designed": GRAPH.to_mermaid(
            decision="decision", pruned_agents=["judge"], notes={"solver": "runs in 90%", "judge": "runs in 0%"}
        ),
        "odd": odd.to_mermaid(decision="the decision"),
        "candidates": GRAPH.to_mermaid(pruned=[Edge("critic", "solver")], faint_label="candidate"),
        "collide": COLLIDE.to_mermaid(decision="decision"),
        "cjk": CJK.to_mermaid(tokens={"研究员->critic🦜": 5.4}, tokens_mean=True),
        "channels": MIXED.to_mermaid(decision="decision", tokens={"a->b": 12}),
        "broken": "flowchart LR\n    a -->\n",  # the parser must be able to say no
    }
    parsed = mermaid_parse(tmp_path, texts)
    assert {name: row["ok"] for name, row in parsed.items()} == {
        "plain": True,
        "full": True,
        "designed": True,
        "odd": True,
        "candidates": True,
        "collide": True,
        "cjk": True,
        "channels": True,
        "broken": False,
    }, parsed
    assert parsed["full"]["type"].startswith("flowchart")


def test_pruned_agents_are_drawn_faint_and_skip_the_decision(tmp_path):
    options = {"decision": "decision", "pruned_agents": ["judge"], "notes": {"judge": "runs in 0%"}}
    dot = GRAPH.to_dot(**options)
    (parsed,) = pydot.graph_from_dot_data(dot)
    judge = next(n for n in parsed.get_nodes() if n.get_name() == "n_judge")
    assert "dashed" in judge.get("style") and judge.get("label") == '"judge\\nruns in 0%"'
    into_decision = [e.get_source() for e in parsed.get_edges() if e.get_destination() == "n_decision"]
    assert sorted(into_decision) == ["n_critic", "n_solver"]
    text = GRAPH.to_mermaid(**options)
    assert "    class n_judge pruned" in text and "n_judge --> n_decision" not in text
    assert '    n_judge["judge<br/>runs in 0%"]' in text
    png = GRAPH.draw(tmp_path / "pruned.png", **options)
    assert matplotlib.image.imread(png).ndim == 3


def test_temporal_self_edges_are_drawn_as_dashed_loops(tmp_path):
    graph = CommGraph(["solver", "judge"], [("solver", "judge"), ("judge", "judge", "temporal")])
    loop = svg_groups(graph.draw(tmp_path / "loop.svg"))["temporal-n_judge-n_judge"]
    style = next(loop.iter(f"{SVG}path")).get("style")
    assert "stroke-dasharray" in style and "#9467bd" in style  # dashed, tab:purple like other temporal edges
    image = matplotlib.image.imread(graph.draw(tmp_path / "loop.png"))[..., :3]
    purple = np.all(np.abs(image - np.array([0x94, 0x67, 0xBD]) / 255) < 0.1, axis=-1)
    rows = np.nonzero(purple.any(axis=1))[0]
    assert purple.sum() > 100 and rows.min() < image.shape[0] / 2  # in the picture, not only in the legend below


def test_pruned_temporal_self_edges_are_drawn_too(tmp_path):
    groups = svg_groups(GRAPH.draw(tmp_path / "g.svg", pruned=[Edge("critic", "critic", "temporal")]))
    assert "pruned-temporal-n_critic-n_critic" in groups


@pytest.mark.parametrize(
    "tokens",
    [
        {"solver->critic": 24},
        {"solver->critic": Usage(input_tokens=24, cache_read=20)},
        UsageReport(per_edge={"solver->critic": Usage(input_tokens=24)}),  # tokens=result.usage, as in the README
        {"solver->critic": {"input_tokens": 24, "output_tokens": 3}},  # a usage dict from samples.jsonl
    ],
    ids=["counts", "usages", "report", "usage-dicts"],
)
def test_tokens_may_be_counts_usages_or_a_whole_report(tmp_path, tokens):
    assert '    n_solver -->|"0.90, 24 tok/task"| n_critic' in GRAPH.to_mermaid(tokens=tokens).splitlines()
    assert 'label="0.90, 24 tok/task"' in GRAPH.to_dot(tokens=tokens)
    texts = svg_texts(GRAPH.draw(tmp_path / "tokens.svg", tokens=tokens))
    assert "0.90, 24 tok/task" in texts and not any("Usage" in text for text in texts)


def test_mean_tokens_say_they_are_means_and_other_tokens_are_refused():
    assert '|"0.90, 24 tok/task (mean)"|' in GRAPH.to_mermaid(tokens={"solver->critic": 24.4}, tokens_mean=True)
    with pytest.raises(TypeError, match="tokens must map edge keys"):
        GRAPH.to_mermaid(tokens=[24])
    with pytest.raises(TypeError, match=r"tokens\['solver->critic'\] is 'many'"):
        GRAPH.to_dot(tokens={"solver->critic": "many"})


def test_node_ids_never_collide():
    (parsed,) = pydot.graph_from_dot_data(COLLIDE.to_dot())
    assert {n.get_name() for n in parsed.get_nodes()} - {"node"} == {"e_a_2d_b", "n_a_2d_b"}
    (edge,) = parsed.get_edges()
    assert (edge.get_source(), edge.get_destination()) == ("e_a_2d_b", "n_a_2d_b")
    lines = COLLIDE.to_mermaid().splitlines()
    assert '    e_a_2d_b["a-b"]' in lines and '    n_a_2d_b["a_2d_b"]' in lines and "    e_a_2d_b --> n_a_2d_b" in lines
    escaped = CommGraph(["a_-b", "a__2d_b", "研"]).to_dot()  # escaped names escape `_` too
    assert all(f"    {node} [" in escaped for node in ("e_a_5f__2d_b", "n_a__2d_b", "e__7814_"))


@pytest.mark.parametrize("weight", ["heavy", -5, 1.5, float("nan"), True])
def test_edge_weights_must_be_probabilities(tmp_path, weight):
    graph = CommGraph(["a", "b"], [Edge("a", "b", weight=weight)])
    number = isinstance(weight, int | float) and not isinstance(weight, bool) and weight == weight
    # text exports only label a weight: any finite number will do there (networkx graphs weigh edges freely)
    exports = [lambda: graph.draw(tmp_path / "w.png")] + ([] if number else [graph.to_mermaid, graph.to_dot])
    for export in exports:
        with pytest.raises(GraphError, match=r"edge a -> b \(spatial\) has weight .*a number from 0 to 1"):
            export()
    if number:
        width = 0.5 + 3 * max(0, min(weight, 1))  # the line stays within the probability range's widths
        assert f"{weight:.2f}" in graph.to_mermaid() and f"penwidth={width:.2f}" in graph.to_dot()


def test_edge_weights_from_0_to_1_are_drawn(tmp_path):
    graph = CommGraph(["a", "b", "c"], [Edge("a", "b", weight=0), Edge("b", "c", weight=1)])
    assert {"0.00", "1.00"} <= set(svg_texts(graph.draw(tmp_path / "w.svg")))


def covering_fonts(character: str) -> list[str]:
    """Installed scalable fonts that have `character` (read with fontTools, apart from draw's own search)."""
    found = []
    for entry in font_manager.fontManager.ttflist:
        try:
            with TTFont(entry.fname, fontNumber=0, lazy=True) as font:
                scalable = any(table in font for table in ("glyf", "CFF ", "CFF2"))
                if scalable and ord(character) in (font.getBestCmap() or {}):
                    found.append(entry.name)
        except Exception:
            continue
    return [name for name in found if not name.startswith("Last Resort")]  # its "glyphs" are boxes


def families(style: str) -> list[str]:
    return re.findall(r"'([^']+)'", style.split("font-family:")[1].split(";")[0])


def test_a_character_the_default_font_lacks_comes_from_a_font_that_has_it(tmp_path):
    graph = CommGraph(["Ⓐlice", "bob"], [("Ⓐlice", "bob")])  # Ⓐ: not in DejaVu Sans, in matplotlib's STIX fonts
    assert covering_fonts("Ⓐ") and "DejaVu Sans" not in covering_fonts("Ⓐ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither draw's warning nor matplotlib's missing-glyph one
        graph.draw(tmp_path / "a.png")
        svg = graph.draw(tmp_path / "a.svg")
    fallback = families(svg_texts(svg)["Ⓐlice"])
    assert fallback[0] == "DejaVu Sans" and fallback[1] in covering_fonts("Ⓐ")


def test_cjk_names_use_an_installed_font_that_has_them_or_a_warning_names_them(tmp_path):
    covering = covering_fonts("研") and covering_fonts("究") and covering_fonts("员")
    if covering:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            svg = CJK.draw(tmp_path / "cjk.svg")
            CJK.draw(tmp_path / "cjk.png")
        assert set(families(svg_texts(svg)["研究员"])) & set(covering)
    else:  # this machine: matplotlib's DejaVu fonts only
        with pytest.warns(UserWarning, match=r"'研究员', 'critic🦜'.*Noto Sans CJK.*\.svg") as caught:
            CJK.draw(tmp_path / "cjk.png")
        assert not [w for w in caught if "Glyph" in str(w.message)]  # one clear warning, not one per glyph
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an SVG keeps the names as text for the viewer's fonts: nothing to warn
        assert "研究员" in svg_texts(CJK.draw(tmp_path / "cjk.svg"))


def test_a_long_chain_wraps_into_rows_and_stays_under_2500_px(tmp_path):
    chain = CommGraph.preset("chain", [f"agent_{i}" for i in range(40)])
    height, width, _ = matplotlib.image.imread(chain.draw(tmp_path / "chain.png", decision="decision")).shape
    assert width <= 2500 and height <= 2500  # one row was 2.2 in per level: 13,500 px wide at 150 dpi
    nodes = [g for g in svg_groups(chain.draw(tmp_path / "chain.svg", decision="decision")) if g.startswith("node-")]
    assert len(nodes) == 40


def node_colours(svg: Path) -> dict[str, str]:
    fills = {}
    for gid, group in svg_groups(svg).items():
        if gid.startswith("node-"):
            fills[gid] = re.search(r"fill: (#[0-9a-f]{6})", ET.tostring(group, encoding="unicode")).group(1)
    return fills


@pytest.mark.parametrize("count", [12, 20, 25])
def test_every_role_gets_its_own_colour(tmp_path, count):
    names = [f"a{i}" for i in range(count)]
    graph = CommGraph.preset("chain", names)
    colours = node_colours(graph.draw(tmp_path / "roles.svg", roles={n: f"role {n}" for n in names}))
    assert len(colours) == count and len(set(colours.values())) == count
    assert colours["node-n_a0"] == "#1f77b4"  # the first ten stay tab10's


def test_the_legend_names_each_kind_of_line_drawn(tmp_path):
    texts = svg_texts(GRAPH.draw(tmp_path / "all.svg", decision="decision", pruned=PRUNED))
    assert {"spatial edge (same round)", "temporal edge (next round)", "read by decision", "pruned edge"} <= set(texts)
    spatial = svg_texts(CommGraph(["a", "b"], [("a", "b")]).draw(tmp_path / "spatial.svg"))
    assert "spatial edge (same round)" in spatial and "temporal edge (next round)" not in spatial
    assert "a" not in {t for t in spatial if spatial[t] and "start" in spatial[t]}  # agents are no legend entries


MIXED = CommGraph(
    ["a", "b", "c"],
    [("a", "b", "spatial", "kv-select@100"), ("a", "c", "spatial", "text"), ("b", "c", "spatial", "kv-select@30+t5")],
)


def test_edges_on_other_channels_than_text_are_drawn_apart_and_named(tmp_path):
    path = MIXED.draw(tmp_path / "mixed.svg")
    texts = svg_texts(path)
    assert {"text spatial edge (same round)", "kv-select@100 edge", "kv-select@30+t5 edge"} <= set(texts)
    svg = path.read_text()
    stroke = lambda gid: re.search(rf'<g id="{gid}">\s*<path[^>]*stroke: (#[0-9a-f]{{6}})', svg).group(1)  # noqa: E731
    colours = [stroke(f"spatial-n_{a}-n_{b}") for a, b in (("a", "b"), ("b", "c"), ("a", "c"))]
    assert len(set(colours)) == 3  # each channel its own colour, text apart from both
    # a designer's pictures pass its channels: one channel keeps its colour whatever else a picture holds
    alone = CommGraph(["a", "b"], [("a", "b", "spatial", "kv-select@30+t5")])
    order = ["text", "kv-select@100", "kv-select@30+t5"]
    lone_svg = alone.draw(tmp_path / "alone.svg", channels=order).read_text()
    mixed_svg = MIXED.draw(tmp_path / "ordered.svg", channels=order).read_text()
    colour = lambda text, gid: re.search(rf'<g id="{gid}">\s*<path[^>]*stroke: (#[0-9a-f]{{6}})', text).group(1)  # noqa: E731
    assert colour(lone_svg, "spatial-n_a-n_b") == colour(mixed_svg, "spatial-n_b-n_c")
    assert MIXED.to_mermaid() == write_picture(MIXED, tmp_path / "m.mmd", channels=order).read_text()
    plain = svg_texts(CommGraph(["a", "b"], [("a", "b")]).draw(tmp_path / "plain.svg"))
    assert "spatial edge (same round)" in plain and not any(t.endswith(" edge") and "@" in t for t in plain)
    dot, mermaid = MIXED.to_dot(), MIXED.to_mermaid()
    assert 'n_a -> n_b [label="kv-select@100"]' in dot and 'n_a -> n_c [label=""]' in dot
    assert 'n_b -->|"kv-select@30+t5"| n_c' in mermaid and "n_a --> n_c" in mermaid
