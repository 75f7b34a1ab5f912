"""Pictures and exports of a graph: PNG and SVG files open, DOT parses, Mermaid holds every node and edge."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import pydot
import pytest

from kvmesh import CommGraph
from kvmesh.graph import Edge

GRAPH = CommGraph(
    ["solver", "critic", "judge"],
    [Edge("solver", "critic", weight=0.9), Edge("critic", "judge", weight=0.4), Edge("judge", "solver", "temporal")],
)
PRUNED = [Edge("solver", "judge")]
TOKENS = {"solver->critic": 42}


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
    assert '"0.90, 42 tok"' in dot


def test_mermaid_lists_nodes_and_edges_by_kind():
    text = GRAPH.to_mermaid(decision="decision", pruned=PRUNED, tokens=TOKENS)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    n_solver -->|"0.90, 42 tok"| n_critic' in lines
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

    from kvmesh.evals.runner import EvalConfig, run_eval
    from kvmesh.evals.viz import write_report

    config = EvalConfig("infoqa", model="tiny-random", limit=3, max_new_tokens=4, agents=2)
    run_eval(config, tmp_path / "run", progress=False)
    page = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "<svg" in page and "Tokens per task, by edge" in page and "agent_1-&gt;agent_2" in page
    assert page.count("<details>") == 3  # one transcript per task
    assert not re.search(r"<script|<link|<img|<iframe|src=|url\((?!#)", page)  # url(#clip) stays inside
    assert all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', page))  # only links inside the page


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
        "broken": "flowchart LR\n    a -->\n",  # the parser must be able to say no
    }
    parsed = mermaid_parse(tmp_path, texts)
    assert {name: row["ok"] for name, row in parsed.items()} == {
        "plain": True,
        "full": True,
        "designed": True,
        "odd": True,
        "candidates": True,
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
