"""The package layering: each package imports only from the ones below it, and no module imports itself back.

The contract lives in pyproject.toml (`[tool.importlinter]`) and `make test` runs `lint-imports` on it; these
tests show that it holds, that it fails on an upward import, and that no import circle exists.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, package_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(LINT.parent), "PYTHONPATH": str(package_dir)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, env=env)


def test_the_layers_contract_holds_and_names_every_package():
    layers = re.search(r"layers = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.DOTALL).group(1)
    packages = {p.name for p in (ROOT / "kvmesh").iterdir() if (p / "__init__.py").is_file()}
    named = set(re.findall(r"kvmesh\.(\w+)", layers))  # a layer may hold siblings: "kvmesh.config | kvmesh.plugins"
    assert named == packages | {"config", "plugins", "runs"}  # modules at the bottom
    done = lint(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "kvmesh", tmp_path / "kvmesh", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "kvmesh" / "llm" / "engine.py"
    engine.write_text(engine.read_text() + "\n\ndef _upward():\n    import kvmesh.agents.team  # noqa\n")
    done = lint(tmp_path, tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "kvmesh.llm.engine -> kvmesh.agents.team" in done.stdout


def test_no_import_circle_among_kvmesh_modules():
    graph = grimp.build_graph("kvmesh")
    imports = nx.DiGraph((m, n) for m in graph.modules for n in graph.find_modules_directly_imported_by(m))
    assert [sorted(c) for c in nx.strongly_connected_components(imports) if len(c) > 1] == []
