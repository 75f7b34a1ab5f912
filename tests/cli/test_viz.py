"""`kvmesh viz` on files that are no graphs, in a subprocess: exit 2 with one line naming the file, what is wrong
and what a graph file holds; never a traceback."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
GRAPH = {"agents": ["a", "b"], "edges": [{"source": "a", "target": "b"}]}


def viz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmesh.cli", "viz", *args], capture_output=True, text=True, env=ENV)


@pytest.mark.parametrize(
    ("text", "output", "problem"),
    [
        ("[1, 2]", "g.png", "holds a JSON array, not a graph; a graph file is one JSON object"),
        ("hello", "g.svg", "is not JSON (Expecting value at line 1, column 1); a graph file is one JSON object"),
        ('{"agents": ["a", "b"], "edges": [{"source": "a", "target": "b", "weight": "heavy"}]}', "g.png", "weight"),
        ('{"agents": ["a", "b"], "edges": [{"source": "a", "target": "b", "weight": -5}]}', "report.html", "weight"),
    ],
    ids=["array", "not-json", "weight-word", "weight-negative-report"],
)
def test_viz_names_the_file_and_says_what_a_graph_file_holds(tmp_path, text, output, problem):
    file = tmp_path / "team.json"
    file.write_text(text)
    out = viz(str(file), "-o", str(tmp_path / output))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"kvmesh: error: {file}") and problem in out.stderr
    if problem == "weight":
        assert "a number from 0 to 1" in out.stderr and "edge a -> b" in out.stderr
    assert not (tmp_path / output).exists()


def test_viz_still_draws_a_good_file(tmp_path):
    file = tmp_path / "team.json"
    file.write_text(json.dumps({**GRAPH, "edges": [{"source": "a", "target": "b", "weight": 0.75}]}))
    out = viz(str(file), "-o", str(tmp_path / "g.mmd"))
    assert out.returncode == 0, out.stderr
    assert '    n_a -->|"0.75"| n_b' in (tmp_path / "g.mmd").read_text().splitlines()
