"""`kvmesh design train|eval|plot` end to end on a tiny random team, and the splits it trains on."""

import json
import os

import matplotlib.image
import pytest

from kvmesh import CommGraph
from kvmesh.cli import main
from kvmesh.cli.specs import load_team
from kvmesh.evals.benchmarks import design_splits, infoqa
from kvmesh.evals.figures import read_picture_source
from kvmesh.topology import load_designer

TINY = ["--model", "tiny-random", "--max-new-tokens", "3"]


def test_training_and_validation_splits_never_share_an_id_or_an_entity():
    train, val = design_splits("infoqa", 40, 20)
    assert len(train) == 40 and len(val) == 20 and not {s.id for s in train} & {s.id for s in val}
    names = lambda samples: {w for s in samples for shard in s.task.shards for w in shard.split() if w.istitle()}  # noqa: E731
    test = infoqa.generate(20, "test")
    assert not names(train) & names(val)
    assert not names(train) & {w for t in test for shard in t.shards for w in shard.split() if w.istitle()}
    train, val = design_splits("humaneval", 30, 10, allow_code_execution=True)
    assert len({s.id for s in train} | {s.id for s in val}) == 40
    assert design_splits("humaneval", 30, 10, allow_code_execution=True)[0][0].id == train[0].id  # seeded
    with pytest.raises(ValueError, match="ask for fewer"):
        design_splits("humaneval", 160, 10, allow_code_execution=True)


def test_gsm8k_design_splits_are_disjoint_lines_of_the_training_file():
    path = os.environ.get("KVMESH_GSM8K_PATH")
    if not path or not os.path.isfile(os.path.join(path, "train.jsonl")):  # as every GSM8K test: CI sets it
        pytest.skip("GSM8K data not found: set KVMESH_GSM8K_PATH to a folder with train.jsonl and test.jsonl")
    train, val = design_splits("gsm8k", 50, 20, data_path=path)
    assert [s.id for s in train] == [f"train/{i}" for i in range(50)]
    assert [s.id for s in val] == [f"train/{i}" for i in range(50, 70)]


def test_design_train_then_eval_against_baselines(tiny, tmp_path, capsys):
    out = tmp_path / "gd"
    train = ["design", "train", "infoqa", "--designer", "gdesigner", *TINY, "--out", str(out)]
    train += ["--train-size", "4", "--val-size", "2", "--steps", "2", "--batch-size", "2", "--eval-every", "1"]
    assert main([*train, "--hidden", "8", "--latent", "4"]) == 0
    printed = capsys.readouterr().out
    assert "gdesigner: trained in" in printed and "validation: score" in printed
    for name in ("before.png", "after.png", "example.png", "before.mmd", "after.mmd", "history.json"):
        assert (out / name).is_file(), name
    assert matplotlib.image.imread(out / "after.png").ndim == 3
    before = (out / "before.mmd").read_text()  # the full candidate graph: complete's 3 edges and their 3 reverses
    assert before.count(" --> n_agent_") == 3 and before.count(" -. candidate .- ") == 3
    assert "    n_agent_2 -. candidate .- n_agent_1" in before
    saved = json.loads((out / "designer" / "designer.json").read_text())
    assert saved["kind"] == "gdesigner" and len(saved["seen_ids"]) == 6
    assert saved["training"]["reinforce"]["updates"] == 2

    assert main([*train, "--hidden", "8", "--latent", "4"]) == 2  # an existing run is not overwritten
    assert "--resume" in capsys.readouterr().err
    assert main([*train, "--hidden", "16", "--latent", "4", "--resume"]) == 2  # nor resumed with other settings
    assert "other settings" in capsys.readouterr().err
    assert main([*train, "--hidden", "8", "--latent", "4", "--pruning-rate", "0.5"]) == 2
    assert "do not apply to the gdesigner designer" in capsys.readouterr().err

    assert main(["run", "In which city does Demi live?", "--designer", str(out)]) == 0
    assert "designed graph: agents agent_1, agent_2, agent_3" in capsys.readouterr().err
    designed = load_team({**load_designer(out / "designer").team.to_spec(), "designer": str(out / "designer")})
    assert designed.designer is not None and designed.to_spec()["designer"] == str((out / "designer").resolve())

    test = tmp_path / "test"
    evaluate = ["design", "eval", "infoqa", "--designers", str(out), "--baselines", "single,chain", *TINY]
    assert main([*evaluate, "--limit", "3", "--out", str(test)]) == 0
    points = json.loads((test / "tradeoff.json").read_text())
    assert [p["name"] for p in points] == ["single", "chain", "gd"]
    assert [p["designer"] for p in points] == [False, False, True]
    assert matplotlib.image.imread(test / "tradeoff.png").ndim == 3
    rows = [json.loads(line) for line in (test / "gd" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("graph" in row for row in rows)  # each task's designed graph is kept
    assert json.loads((test / "gd" / "summary.json").read_text())["config"]["designer"].endswith("designer")

    assert main(["design", "plot", str(test / "single"), str(test / "gd"), "-o", str(tmp_path / "p.svg")]) == 0
    assert main(["eval", "infoqa", "--designer", str(out), "--limit", "2", "--out", str(tmp_path / "e")]) == 0
    assert "designer gd" in capsys.readouterr().out  # the report names the designer
    # a designer's run is drawn as the summary of the graphs it chose over the test tasks
    assert main(["viz", str(test / "gd"), "-o", str(tmp_path / "gd.png")]) == 0
    graph, options = read_picture_source(test / "gd")
    designed = [CommGraph.from_dict(row["graph"]) for row in rows]
    for edge in graph.edges():
        share = sum((edge.source, edge.target) in g.edge_set() for g in designed) / len(designed)
        assert edge.weight == pytest.approx(share, abs=1e-3) and share >= 0.5
    assert options["pruned_agents"] == [] and options["notes"] is None  # gdesigner never leaves an agent out


def test_eval_leaves_out_what_the_designer_saw(tiny, tmp_path):
    from kvmesh.evals.benchmarks import benchmark_team
    from kvmesh.evals.runner import EvalConfig, run_eval
    from kvmesh.topology import GDesigner, GDesignerConfig
    from kvmesh.topology.designer import DESIGNER_FILE

    team = benchmark_team("infoqa", "tiny-random", "chain", 2, max_new_tokens=3)
    designer = GDesigner(GDesignerConfig(hidden=8, latent=4))
    designer.bind(team)
    designer.seen_ids = [f"infoqa-test-0-{i}" for i in (0, 2)]  # as if it had trained on two test tasks
    designer.save(tmp_path / "d")
    config = EvalConfig("infoqa", limit=4, designer=str(tmp_path / "d"))
    summary = run_eval(config, tmp_path / "run", progress=False, load_designer=load_designer)
    ids = [json.loads(line)["id"] for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert sorted(ids) == [f"infoqa-test-0-{i}" for i in (1, 3, 4, 5)] and summary["excluded_seen"] == 2
    assert json.loads((tmp_path / "d" / DESIGNER_FILE).read_text())["kind"] == "gdesigner"
    with pytest.raises(ValueError, match="either designer or spec"):
        EvalConfig("infoqa", designer="x", spec="y")


def test_design_eval_scores_baselines_and_designers_on_the_same_test_tasks(tiny, tmp_path):
    from kvmesh.evals.benchmarks import benchmark_team
    from kvmesh.topology import EdgeLogitsDesigner

    team = benchmark_team("humaneval", "tiny-random", "chain", 2, max_new_tokens=3, code_execution=True)
    designer = EdgeLogitsDesigner()
    designer.bind(team)
    designer.seen_ids = ["HumanEval/0", "HumanEval/2"]  # HumanEval's only split is the test split
    designer.save(tmp_path / "d")
    command = ["design", "eval", "humaneval", "--designers", str(tmp_path / "d"), "--baselines", "single"]
    assert main([*command, *TINY, "--limit", "2", "--allow-code-execution", "--out", str(tmp_path / "t")]) == 0
    for run in ("single", "d"):
        config = json.loads((tmp_path / "t" / run / "config.json").read_text())
        assert config["exclude_ids"] == ["HumanEval/0", "HumanEval/2"]
        ids = [json.loads(line)["id"] for line in (tmp_path / "t" / run / "samples.jsonl").read_text().splitlines()]
        assert sorted(ids) == ["HumanEval/1", "HumanEval/3"]


def test_a_multi_round_designer_whose_graph_keeps_no_temporal_edge_still_trains_and_applies(tiny, tmp_path, capsys):
    out = tmp_path / "el"
    train = ["design", "train", "infoqa", "--designer", "edge-logits", *TINY, "--rounds", "2", "--out", str(out)]
    train += ["--train-size", "2", "--val-size", "1", "--steps", "1", "--batch-size", "2", "--threshold", "0.9"]
    assert main(train) == 0, capsys.readouterr().err  # every edge below 0.9: the fixed graph has no temporal edge
    designer = load_designer(out / "designer")
    assert designer.apply().graph.edges("temporal") == []  # applied with a warning, not refused


def test_a_failed_design_start_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "bad"
    empty = tmp_path / "emptydir"
    empty.mkdir()
    args = ["design", "train", "infoqa", "--designer", "agp", "--model", str(empty), "--out", str(out)]
    assert main([*args, "--train-size", "2", "--val-size", "1"]) == 2
    assert "emptydir" in capsys.readouterr().err and not out.exists()
