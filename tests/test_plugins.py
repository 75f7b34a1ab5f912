"""Plug-ins from outside kvmesh, through real entry points: a package (tests/plugin_example) installed into a
temporary folder on sys.path with its `*.dist-info`, found by importlib.metadata, adds a channel, a benchmark, a
designer and a model backend; each runs where kvmesh's own would (a team, an evaluation, a saved designer,
an agent's model spec)."""

import importlib
import shutil
import sys
from pathlib import Path

import pytest

from kvmesh import Agent, CommGraph, Task, Team, plugins
from kvmesh.agents.tools import ToolNotAvailableError, tool_from_name
from kvmesh.evals.benchmarks import BENCHMARKS, BenchmarkNotAvailableError, make_benchmark
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import read_samples
from kvmesh.kvcomm.channel import channel_names, make_channel
from kvmesh.kvcomm.text import TextChannel
from kvmesh.llm.local import BACKENDS, load_model
from kvmesh.topology import DESIGNERS, DesignerNotAvailableError, load_designer
from kvmesh.topology.edge_logits import EdgeLogitsConfig

EXAMPLE = Path(__file__).parent / "plugin_example" / "kvmesh_example_plugin.py"
MODULE = EXAMPLE.stem
ENTRY_POINTS = {
    "kvmesh.channels": {"marked": f"{MODULE}:MarkedChannel"},
    "kvmesh.benchmarks": {"capitals": f"{MODULE}:Capitals"},
    "kvmesh.designers": {"fixed-logits": f"{MODULE}:FixedLogits"},
    "kvmesh.backends": {"echo": f"{MODULE}:load_echo"},
}


def install(folder: Path, name: str, entry_points: dict[str, dict[str, str]]) -> None:
    """What pip leaves in site-packages: the module, and a dist-info that names the entry points."""
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    groups = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) for group, points in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(groups))


def on_path(folder: Path):
    """Put an installed folder on sys.path for the duration; every registry reads its entry points again."""
    sys.path.insert(0, str(folder))
    plugins.refresh()
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)
        plugins.refresh()


@pytest.fixture
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site-packages")
    install(folder, "kvmesh-example-plugin", ENTRY_POINTS)
    yield from on_path(folder)


def test_entry_points_add_names_after_the_built_ins(example):
    assert channel_names()[:5] == ("text", "kv-reuse", "kv-select", "c2c", "marked")
    assert tuple(BENCHMARKS) == ("gsm8k", "humaneval", "infoqa", "infoqa-projects", "capitals")
    assert "fixed-logits" in DESIGNERS and "echo" in BACKENDS and "openai" in BACKENDS
    assert isinstance(make_benchmark("capitals"), example.Capitals)


def test_an_unknown_name_lists_what_exists_and_how_to_add_one(example):
    with pytest.raises(
        BenchmarkNotAvailableError, match=r"known benchmarks: capitals, gsm8k, humaneval, infoqa, infoqa-projects\. "
    ):
        make_benchmark("pigeon")
    with pytest.raises(DesignerNotAvailableError, match=r"'kvmesh\.designers' entry point"):
        DESIGNERS.get("pigeon")
    with pytest.raises(ToolNotAvailableError, match=r"TOOLS\.register\(name, cls\)"):
        tool_from_name("pigeon")


def test_a_plugged_in_channel_lays_out_messages_in_a_team(example, tiny):
    agents = [Agent(n, model="tiny-random", max_new_tokens=6) for n in "ab"]
    team = Team(agents, CommGraph.preset("chain", agents).with_channel("marked"), decision="last")
    result = team.run(Task("Q?"))
    prompt = result.messages[1].response_metadata["prompt"]
    assert f"Message from a (this round):\n{example.MARK} {result.messages[0].content.splitlines()[0]}" in prompt
    assert example.MARK not in result.messages[0].response_metadata["prompt"]  # a reads no message
    assert isinstance(team.channels["marked"], example.MarkedChannel)


def test_a_plugged_in_benchmark_runs_through_the_runner(example, tiny, tmp_path):
    summary = run_eval(EvalConfig("capitals", oracle=True), tmp_path / "oracle", progress=False)
    assert summary["samples"] == 2 and summary["metrics"]["accuracy"]["value"] == 1.0  # its own scoring path
    config = EvalConfig("capitals", model="tiny-random", agents=2, max_new_tokens=4)
    summary = run_eval(config, tmp_path / "model", progress=False)
    rows = read_samples(tmp_path / "model")
    assert summary["samples"] == 2 and {row["id"] for row in rows} == {"capitals/0", "capitals/1"}


def test_a_plugged_in_designer_is_saved_and_loaded_by_its_kind(example, tiny, tmp_path):
    agents = [Agent(f"agent_{i}", "team member", model="tiny-random", max_new_tokens=3) for i in (1, 2, 3)]
    config = EdgeLogitsConfig(steps=2, batch_size=2, eval_every=2, prune_every=0)
    designer = DESIGNERS["fixed-logits"](config, metric=lambda sample, result: float(result.usage.total.calls <= 2))
    tasks = [Task(f"Question {i}?", id=str(i)) for i in range(4)]
    designer.compile(Team(agents, "complete"), tasks[:2], tasks[2:], progress=False)
    designer.save(tmp_path / "designer")
    loaded = load_designer(tmp_path / "designer")
    assert type(loaded) is example.FixedLogits
    assert loaded.design(Task("any")) == designer.design(Task("any"))


def test_a_plugged_in_backend_serves_an_agent_model_spec(example, tiny):
    def run(model: str):
        agents = [Agent(n, model=model, max_new_tokens=6) for n in "ab"]
        team = Team(agents, CommGraph.preset("chain", agents), decision="last")
        return team, team.run(Task("Q?"))

    team, result = run("echo:tiny-random")
    echo = team.agents[0].llm
    assert isinstance(echo, example.EchoModel) and echo.spec == "echo:tiny-random"
    assert load_model("echo:tiny-random") is echo and team.agents[1].llm is echo  # one model per spec
    assert echo.rows == 2  # both turns ran on the backend
    _, local = run("tiny-random")
    assert [m.content for m in result.messages] == [m.content for m in local.messages]  # the same model behind it


def test_an_entry_point_cannot_replace_a_built_in(tmp_path):
    install(tmp_path, "kvmesh-clashing-plugin", {"kvmesh.channels": {"text": f"{MODULE}:MarkedChannel"}})
    with pytest.warns(UserWarning, match="entry point text = .* is ignored"):
        for module in on_path(tmp_path):
            assert type(make_channel("text")) is TextChannel
            assert not isinstance(make_channel("text"), module.MarkedChannel)
