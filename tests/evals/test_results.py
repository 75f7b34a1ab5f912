"""Result files and the README tables built from them: a recorded figure renders into its block and the check
passes; a number changed by hand in the README, or a file re-recorded without rebuilding, is named; broken
markers are errors naming their line; every file carries its provenance. Everything writes under tmp_path."""

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kvmesh.evals.results import (
    MAX_ROWS,
    FiguresError,
    check_readme,
    format_cell,
    load_result,
    record_result,
    render_readme,
    render_table,
    unused_results,
)

REPO = Path(__file__).resolve().parents[2]
COLUMNS = [
    {"key": "system", "header": "system", "format": ""},
    {"key": "accuracy", "header": "accuracy", "format": ".3f"},
    {"key": "tokens", "header": "tokens/task", "format": ".1f"},
]
ROWS = [
    {"system": "iteration 0", "accuracy": {"value": 0.38, "ci95": [0.313, 0.45]}, "tokens": 72.0},
    {"system": "iteration 2", "accuracy": {"value": 0.445, "ci95": [0.378, 0.514]}, "tokens": None},
]


def record(folder: Path, name: str = "optima", **overrides) -> Path:
    fields = {
        "title": "Optima on InfoQA",
        "command": "kvmesh optima train --task infoqa --out runs/optima",
        "columns": COLUMNS,
        "rows": ROWS,
        "seeds": [0, 1, 2],
        "config": {"iterations": 2},
        "test_scorings": 1,
        "folder": folder,
    }
    return record_result(name, **(fields | overrides))


def readme_with(*names: str) -> str:
    blocks = "".join(
        f"## {name}\n\n<!-- figures:{name} -->\nstale text\n<!-- /figures:{name} -->\n\n" for name in names
    )
    return f"# kvmesh\n\nIntro | with a pipe.\n\n{blocks}## After\n\nkept as is\n"


def test_a_recorded_figure_renders_into_its_block_and_the_check_then_passes(tmp_path):
    path = record(tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(readme_with("optima"))
    assert check_readme(readme, tmp_path / "results") == ["optima"]  # the block holds no table yet

    text = render_readme(readme.read_text(), tmp_path / "results")
    readme.write_text(text)
    assert check_readme(readme, tmp_path / "results") == []
    assert render_readme(text, tmp_path / "results") == text  # rebuilding a rebuilt README changes nothing

    lines = text.splitlines()
    start, end = lines.index("<!-- figures:optima -->"), lines.index("<!-- /figures:optima -->")
    assert lines[start + 1 : start + 5] == [
        "| system | accuracy | tokens/task |",
        "|---|---:|---:|",
        "| iteration 0 | 0.380 [0.313, 0.450] | 72.0 |",
        "| iteration 2 | 0.445 [0.378, 0.514] | - |",
    ]
    assert lines[start + 5] == ""  # a line right under a table would be read as one of its rows
    source = lines[start + 6]
    commit = json.loads(path.read_text())["provenance"]["commit"]
    assert source.startswith("*") and source.endswith("*") and start + 7 == end
    for part in ("results/optima.json", "kvmesh optima train --task infoqa --out runs/optima", commit[:7], "0, 1, 2"):
        assert part in source
    # everything outside the block is kept byte for byte
    assert text[: text.index("<!-- figures:optima -->")] == readme_with("optima").split("<!-- figures:")[0]
    assert text.endswith("<!-- /figures:optima -->\n\n## After\n\nkept as is\n")


def test_a_number_edited_by_hand_or_a_rerecorded_file_makes_the_check_name_that_block(tmp_path):
    results = tmp_path / "results"
    record(results, "optima")
    record(results, "agp", rows=[{"system": "agp", "accuracy": 0.61, "tokens": 80.0}])
    readme = tmp_path / "README.md"
    readme.write_text(render_readme(readme_with("optima", "agp"), results))
    assert check_readme(readme, results) == []

    edited = readme.read_text().replace("| iteration 2 | 0.445", "| iteration 2 | 0.455")
    assert edited != readme.read_text()
    readme.write_text(edited)
    assert check_readme(readme, results) == ["optima"]

    readme.write_text(render_readme(edited, results))
    record(results, "agp", rows=[{"system": "agp", "accuracy": 0.59, "tokens": 80.0}])  # re-measured
    assert check_readme(readme, results) == ["agp"]
    assert "| agp | 0.590 | 80.0 |" in render_readme(readme.read_text(), results)


def test_an_interval_cell_and_a_missing_value_render_as_specified():
    assert format_cell({"value": 0.445, "ci95": [0.378, 0.514]}, ".3f") == "0.445 [0.378, 0.514]"
    assert format_cell({"value": 12, "ci95": None}, "d") == "12"
    assert format_cell({"value": None, "ci95": [0.1, 0.2]}, ".3f") == "- [0.100, 0.200]"
    assert format_cell(None, ".3f") == "-"
    assert format_cell(0.47, ".0%") == "47%"
    assert format_cell("a|b", "") == r"a\|b"  # a bare pipe would split the cell


@pytest.mark.parametrize(
    ("readme", "line", "words"),
    [
        ("a\n\n<!-- figures:absent -->\n<!-- /figures:absent -->\n", 3, "does not exist"),
        ("a\n<!-- figures:optima -->\nb\n\nc\n", 2, "never closed"),
        (readme_with("optima") + readme_with("optima"), 20, "appears twice (lines 7 and 20)"),
        ("<!-- figures:optima -->\n<!-- figures:agp -->\n", 2, "opens inside block 'optima'"),
        ("a\n\n<!-- /figures:optima -->\n", 3, "closes 'optima'"),
        ("<!-- figures:optima -->\n<!-- /figures:agp -->\n", 2, "closes 'agp'"),
        ("x\n<!-- figures:../etc/passwd -->\n", 2, "does not name a result file"),
    ],
)
def test_a_broken_readme_is_an_error_naming_the_line(tmp_path, readme, line, words):
    record(tmp_path / "results")
    with pytest.raises(FiguresError, match=rf"^line {line}: .*{re.escape(words)}"):
        render_readme(readme, tmp_path / "results")


def test_markers_in_fenced_code_or_inside_a_sentence_are_left_alone(tmp_path):
    text = "Write `<!-- figures:NAME -->` blocks:\n\n```markdown\n<!-- figures:absent -->\n```\n"
    assert render_readme(text, tmp_path / "results") == text


def test_a_result_carries_its_provenance(tmp_path):
    result = json.loads(record(tmp_path).read_text())
    assert {"title", "command", "columns", "rows", "seeds", "config", "notes", "test_scorings"} <= set(result)
    provenance = result["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"])  # this test runs in a git checkout
    assert isinstance(provenance["dirty"], bool)
    date = datetime.fromisoformat(provenance["date"])
    assert date.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - date) < timedelta(hours=1)
    machine = provenance["machine"]
    assert set(machine) == {"platform", "cpu", "cores", "memory_gib", "gpu"}
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["platform"]
    versions = provenance["versions"]
    assert set(versions) == {"python", "torch", "transformers", "peft", "trl", "kvmesh"}
    assert versions["python"] and versions["torch"] and versions["kvmesh"]
    assert load_result(tmp_path / "optima.json") == result


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "with space", "x" * 81])
def test_a_name_that_is_not_a_safe_file_stem_is_refused_before_writing(tmp_path, name):
    with pytest.raises(FiguresError, match="not a safe file stem"):
        record(tmp_path / "results", name)
    assert not (tmp_path / "results").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"rows": [{"system": str(i), "accuracy": 0.5} for i in range(MAX_ROWS + 1)]}, "not per-task data"),
        ({"rows": [{"system": "a reply " * 40, "accuracy": 0.5}]}, "not transcripts"),
        ({"rows": [{"system": "nan", "accuracy": float("nan")}]}, "not a finite number"),
        ({"rows": [{"system": "x", "accuracy": {"value": 0.5, "ci95": [0.4]}}]}, "ci95 must be [lo, hi]"),
        ({"rows": [{"system": "x", "accuracy": "high"}]}, "cannot format 'high'"),
        ({"rows": []}, "non-empty list"),
        ({"seeds": [0, "1"]}, "seeds must be a list of integers"),
        ({"test_scorings": -1}, "test_scorings must be a count"),
        ({"config": {"model": object()}}, "JSON cannot store"),
        ({"command": " "}, "command is empty"),
        ({"columns": [*COLUMNS, {"key": "system", "header": "again"}]}, "column keys repeat"),
    ],
)
def test_a_result_that_is_not_a_small_table_of_figures_is_refused_before_writing(tmp_path, overrides, words):
    with pytest.raises(FiguresError, match=re.escape(words)):
        record(tmp_path / "results", **overrides)
    assert not (tmp_path / "results" / "optima.json").exists()


def test_a_hand_made_file_is_checked_when_the_readme_is_built(tmp_path):
    results = tmp_path / "results"
    path = record(results)
    data = json.loads(path.read_text())
    (results / "renamed.json").write_text(json.dumps(data))
    with pytest.raises(FiguresError, match=re.escape("renamed.json holds the result named 'optima'")):
        render_readme(readme_with("renamed"), results)
    del data["provenance"]
    path.write_text(json.dumps(data))
    with pytest.raises(FiguresError, match=re.escape("optima.json has no provenance")):
        render_readme(readme_with("optima"), results)
    del data["seeds"]
    path.write_text(json.dumps(data))
    with pytest.raises(FiguresError, match=re.escape("optima.json: lacks seeds")):
        render_readme(readme_with("optima"), results)


def test_the_table_says_when_nothing_is_seeded_or_the_tree_was_dirty(tmp_path):
    result = json.loads(record(tmp_path, seeds=None, test_scorings=None).read_text())
    result["provenance"] |= {"commit": "f" * 40, "dirty": True}
    source = render_table(result).splitlines()[-1]
    assert "seeds -" in source and "`fffffff` (uncommitted changes)" in source and "scored on test" not in source
    result["provenance"] |= {"commit": None, "dirty": None}
    assert "commit unknown" in render_table(result)


def test_result_files_no_block_shows_are_listed(tmp_path):
    results = tmp_path / "results"
    record(results, "optima")
    record(results, "agp")
    readme = tmp_path / "README.md"
    readme.write_text(render_readme(readme_with("optima"), results))
    assert unused_results(readme, results) == [str(results / "agp.json")]
    assert check_readme(readme, results) == []  # an unshown file is not an error


def test_the_repository_readme_matches_its_results_folder():
    assert check_readme(REPO / "README.md", REPO / "results") == []
