"""`kvmesh figures`: rewrites a README's figure blocks from result files and says which changed; `--check`
changes nothing and exits 1 naming the blocks that differ; a broken README exits 2 naming the file and line."""

from pathlib import Path

import pytest

from kvmesh.cli import main
from kvmesh.evals.results import record_result


@pytest.fixture
def project(tmp_path) -> tuple[Path, Path]:
    """A README with one figures block (not yet built) and the results folder holding its file."""
    results = tmp_path / "results"
    record_result(
        "latent",
        title="kv-select against text",
        command="kvmesh bench latent --limit 20",
        columns=[
            {"key": "mode", "header": "mode", "format": ""},
            {"key": "accuracy", "header": "acc", "format": ".2f"},
        ],
        rows=[
            {"mode": "text", "accuracy": 0.5},
            {"mode": "kv-select@30", "accuracy": {"value": 0.4, "ci95": [0.2, 0.6]}},
        ],
        seeds=[0],
        config={"limit": 20},
        folder=results,
    )
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- figures:latent -->\n<!-- /figures:latent -->\n\nthe end\n")
    return readme, results


def figures(readme: Path, results: Path, *flags: str) -> int:
    return main(["figures", "--readme", str(readme), "--results", str(results), *flags])


def test_figures_rebuilds_the_blocks_then_check_passes(project, capsys):
    readme, results = project
    assert figures(readme, results, "--check") == 1  # the block is still empty
    assert "latent" in capsys.readouterr().err

    assert figures(readme, results) == 0
    assert "rebuilt block(s) latent" in capsys.readouterr().out
    text = readme.read_text()
    assert "| kv-select@30 | 0.40 [0.20, 0.60] |" in text and text.endswith("<!-- /figures:latent -->\n\nthe end\n")

    assert figures(readme, results) == 0
    assert "already match" in capsys.readouterr().out and readme.read_text() == text
    assert figures(readme, results, "--check") == 0


def test_check_exits_1_on_a_number_edited_by_hand_and_changes_nothing(project, capsys):
    readme, results = project
    assert figures(readme, results) == 0
    edited = readme.read_text().replace("| text | 0.50 |", "| text | 0.55 |")
    assert "0.55" in edited
    readme.write_text(edited)
    capsys.readouterr()

    assert figures(readme, results, "--check") == 1
    err = capsys.readouterr().err
    assert "block(s) latent differ" in err and "make figures" in err
    assert readme.read_text() == edited


def test_a_broken_readme_exits_2_naming_the_file_and_line(project, capsys):
    readme, results = project
    readme.write_text("# title\n\n<!-- figures:latent -->\nno end marker\n")
    assert figures(readme, results, "--check") == 2
    err = capsys.readouterr().err
    assert f"{readme}: line 3:" in err and "never closed" in err

    assert figures(readme.parent / "absent.md", results) == 2
    assert "absent.md does not exist" in capsys.readouterr().err


def test_a_result_file_no_block_shows_is_noted_not_refused(project, capsys):
    readme, results = project
    readme.write_text("# no blocks\n")
    assert figures(readme, results, "--check") == 0
    assert f"no block of {readme} shows {results / 'latent.json'}" in capsys.readouterr().out
