"""`kvmesh viz`'s library side: graph files that are not graphs are named and explained, a run's edge tokens are
labelled as means, and the report page rounds its metrics."""

import json
import re

import pytest

from kvmesh import CommGraph
from kvmesh.evals.figures import read_picture_source
from kvmesh.evals.report import write_report
from kvmesh.graph.draw import write_picture
from kvmesh.graph.edge import GraphError

GRAPH = {"agents": ["a", "b"], "edges": [{"source": "a", "target": "b"}]}


def with_weight(weight) -> str:
    return json.dumps({"agents": ["a", "b"], "edges": [{"source": "a", "target": "b", "weight": weight}]})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", r" holds a JSON array, not a graph; a graph file is one JSON object"),
        ("hello", r" is not JSON \(Expecting value at line 1, column 1\); a graph file is one JSON object"),
        (with_weight("heavy"), r": edge a -> b \(spatial\) has weight 'heavy': .*a number from 0 to 1"),
        (with_weight(-5), r": edge a -> b \(spatial\) has weight -5: .*probability"),
        (json.dumps({"agents": "a b"}), r": agents must be a list of names"),
        (json.dumps({**GRAPH, "roles": ["a"]}), r': "roles" must map agent names to role names'),
    ],
    ids=["array", "not-json", "weight-word", "weight-negative", "agents-string", "roles-list"],
)
def test_a_file_that_is_no_graph_is_named_with_what_is_wrong(tmp_path, text, problem):
    file = tmp_path / "team.json"
    file.write_text(text)
    with pytest.raises(GraphError, match=rf"^{re.escape(str(file))}{problem}"):
        read_picture_source(file)


def test_a_binary_file_is_not_json_either(tmp_path):
    file = tmp_path / "team.png"
    file.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(GraphError, match=rf"^{re.escape(str(file))} is not JSON \(not UTF-8 text"):
        read_picture_source(file)


def test_a_runs_edge_tokens_are_labelled_as_means_over_its_tasks(tmp_path):
    (tmp_path / "graph.json").write_text(json.dumps({"graph": GRAPH, "decision": "decision"}))
    usages = [{"per_edge": {"a->b": {"input_tokens": n}}, "per_agent": {}} for n in (20, 25)]
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"id": i, "usage": u}) + "\n" for i, u in enumerate(usages))
    )
    graph, options = read_picture_source(tmp_path)
    assert options["tokens"] == {"a->b": 22} and options["tokens_mean"] is True
    mermaid = write_picture(graph, tmp_path / "run.mmd", **options).read_text()
    assert '    n_a -->|"22 tok/task (mean)"| n_b' in mermaid.splitlines()


def test_the_report_rounds_metrics_and_their_intervals(tmp_path):
    (tmp_path / "graph.json").write_text(CommGraph.from_dict(GRAPH).to_json())
    metrics = {"accuracy": {"value": 0.39512345, "ci95": [0.32812345678, 0.46634567891], "n": 200}}
    (tmp_path / "summary.json").write_text(json.dumps({"metrics": metrics}))
    page = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert '<td>accuracy</td><td class="n">0.395</td><td>[0.328, 0.466]</td>' in page
    assert "0.3281" not in page and "0.4663" not in page
