"""`kvmesh design train|eval|plot` end to end on a tiny random team, and the splits it trains on."""

import json
import os
from pathlib import Path

import matplotlib.image
import pytest
import torch

from kvmesh import CommGraph
from kvmesh.cli import main
from kvmesh.cli.specs import load_team
from kvmesh.evals.benchmarks import design_splits, infoqa
from kvmesh.evals.figures import read_picture_source
from kvmesh.topology import load_designer
from kvmesh.topology.designer import DESIGNER_FILE, WEIGHTS_FILE

TINY = ["--model", "tiny-random", "--max-new-tokens", "3"]
SMALL = ["--train-size", "4", "--val-size", "2", "--steps", "1", "--batch-size", "2"]


def scored_ids(run: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (run / "samples.jsonl").read_text().splitlines()]


def check_apart(training: Path, test_ids: list[str]) -> tuple[list[str], list[str]]:
    """From the files a training run and an eval wrote: the ids trained on, validated on and scored on test are
    pairwise disjoint; returns the train and validation ids."""
    splits = json.loads((training / "splits.json").read_text())
    train, val = splits["train"]["ids"], splits["validation"]["ids"]
    assert len(train) == 4 and len(val) == 2 and len(test_ids) == 3
    # what the training loop itself iterated over and what the saved designer says it saw
    assert torch.load(training / "checkpoint.pt", weights_only=False)["ids"] == train + val
    assert sorted(json.loads((training / "designer" / DESIGNER_FILE).read_text())["seen_ids"]) == sorted(train + val)
    assert not set(train) & set(val) and not set(train) & set(test_ids) and not set(val) & set(test_ids)
    return train, val


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
    assert all(s.id.startswith("train/") for s in train + val) and not {s.id for s in train} & {s.id for s in val}
    assert [s.id for s in train] == sorted((s.id for s in train), key=lambda i: int(i.split("/")[1]))


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
    from kvmesh.evals.benchmarks import benchmark_team, make_benchmark
    from kvmesh.topology import EdgeLogitsDesigner

    team = benchmark_team("humaneval", "tiny-random", "chain", 2, max_new_tokens=3, code_execution=True)
    test = [s.id for s in make_benchmark("humaneval", allow_code_execution=True).samples("test")][:4]
    train = make_benchmark("humaneval", allow_code_execution=True).samples("train")[0].id
    designer = EdgeLogitsDesigner()
    designer.bind(team)
    designer.seen_ids = [test[0], test[2], train]  # as if it had seen two test problems
    designer.save(tmp_path / "d")
    command = ["design", "eval", "humaneval", "--designers", str(tmp_path / "d"), "--baselines", "single"]
    assert main([*command, *TINY, "--limit", "2", "--allow-code-execution", "--out", str(tmp_path / "t")]) == 0
    for run in ("single", "d"):
        config = json.loads((tmp_path / "t" / run / "config.json").read_text())
        assert config["exclude_ids"] == sorted([test[0], test[2]]) and config["split"] == "test"
        assert sorted(scored_ids(tmp_path / "t" / run)) == sorted([test[1], test[3]])


def test_design_eval_scores_a_grid_of_fixed_teams_on_channels_and_plots_them_against_time(tiny, tmp_path, capsys):
    from kvmesh.cli.design_eval import GRID, baseline_names

    assert len(baseline_names("grid,chain,grid")) == len(GRID) + 1  # each fixed team once
    out = tmp_path / "grid"
    baselines = "single,chain:kv-select@100,complete:kv-select@100+t5,chain"
    assert main(["design", "eval", "infoqa", *TINY, "--baselines", baselines, "--limit", "2", "--out", str(out)]) == 0
    for name in ("chain:kv-select@100", "complete:kv-select@100+t5"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["channel"] == name.split(":", 1)[1] and config["topology"] == name.split(":")[0]
        rows = [json.loads(line) for line in (out / name / "samples.jsonl").read_text().splitlines()]
        assert all(row["usage"]["total"]["kv_bytes"] > 0 for row in rows)  # the latent channel carried them
    text = [json.loads(line) for line in (out / "chain" / "samples.jsonl").read_text().splitlines()]
    assert all(row["usage"]["total"]["kv_bytes"] == 0 for row in text)
    assert (out / "tradeoff-time.png").is_file() and "tradeoff-time.png" in capsys.readouterr().out
    points = {p["name"]: p for p in json.loads((out / "tradeoff.json").read_text())}
    assert all(p["seconds"] > 0 for p in points.values())
    bad = ["design", "eval", "infoqa", *TINY, "--out", str(tmp_path / "bad")]
    assert main([*bad, "--baselines", "ring"]) == 2
    assert "names no topology" in capsys.readouterr().err
    assert main([*bad, "--baselines", "chain:kv-select@lots"]) == 2
    assert "not a kv-select variant" in capsys.readouterr().err


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


def test_a_channel_choosing_designer_trains_saves_and_says_each_edge_s_channel(tiny, tmp_path, capsys):
    out = tmp_path / "choosing"
    args = ["design", "train", "infoqa", "--designer", "gdesigner", *TINY, "--channels", "text", "kv-select@100"]
    args += ["--steps", "2", "--batch-size", "2", "--train-size", "4", "--val-size", "2", "--hidden", "8"]
    assert main([*args, "--latent", "4", "--out", str(out)]) == 0
    assert "(cost: time)" in capsys.readouterr().out
    saved = json.loads((out / "designer" / DESIGNER_FILE).read_text())["config"]
    assert saved["channels"] == ["text", "kv-select@100"] and saved["cost"] == "time"
    assert main(["run", "In which city does Demi live?", "--designer", str(out)]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("designed graph"))
    edges = line.split("; edges ", 1)[1].split(", ")
    assert edges and all(e.endswith(("[text]", "[kv-select@100]")) for e in edges), line
    # a designer choosing a variant that calibrates (kv-select@30) is evaluated as it trained: uncalibrated
    partial = tmp_path / "partial"
    args[args.index("kv-select@100")] = "kv-select@30"
    assert main([*args, "--latent", "4", "--out", str(partial)]) == 0
    assert main(["eval", "infoqa", "--designer", str(partial), "--limit", "2", "--out", str(tmp_path / "e")]) == 0
    data = tmp_path / "held-out.jsonl"  # any InfoQA file: a user's held-out tasks, all of them scored
    data.write_text("".join(task.to_json() + "\n" for task in infoqa.generate(4, "test", seed=11)))
    on_file = ["eval", "infoqa", "--designer", str(out), "--data-path", str(data), "--out", str(tmp_path / "f")]
    assert main(on_file) == 0
    rows = [json.loads(line) for line in (tmp_path / "f" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(
        edge["channel"] in ("text", "kv-select@100") for r in rows for edge in r["graph"]["edges"]
    )


def test_a_kv_bytes_cost_on_a_text_team_names_the_flag_that_sets_its_scale(tiny, tmp_path, capsys):
    args = ["design", "train", "infoqa", "--designer", "gdesigner", *TINY, "--cost", "kv-bytes", "--steps", "1"]
    assert main([*args, "--train-size", "2", "--val-size", "1", "--out", str(tmp_path / "kv")]) == 2
    error = capsys.readouterr().err
    assert "spends no KV bytes" in error and "--token-normalizer" in error
    assert not (tmp_path / "kv").exists()  # a failed start leaves nothing behind
    assert main([*args, "--cost", "dollars", "--out", str(tmp_path / "d")]) == 2
    assert "dollars" in capsys.readouterr().err


def test_design_on_an_infoqa_file_trains_validates_and_tests_on_disjoint_tasks(tiny, tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"  # no split field: the hash of each id and the data seed splits it
    data.write_text("".join(task.to_json() + "\n" for task in infoqa.generate(60, "test", seed=3)))
    out, test = tmp_path / "el", tmp_path / "test"
    files = ["--data-path", str(data), "--agents", "2"]  # the generated tasks have two shards
    train = ["design", "train", "infoqa", "--designer", "edge-logits", *TINY, *files, *SMALL, "--out", str(out)]
    assert main(train) == 0, capsys.readouterr().err
    assert json.loads((out / "splits.json").read_text())["train"]["rule"]["by"] == "hash"

    evaluate = ["design", "eval", "infoqa", "--designers", str(out), "--baselines", "chain", *TINY, *files]
    assert main([*evaluate, "--limit", "3", "--seed", "1", "--out", str(test)]) == 2  # another hash split
    assert "pass --seed 0" in capsys.readouterr().err and not test.exists()
    assert main([*evaluate, "--limit", "3", "--out", str(test)]) == 0, capsys.readouterr().err
    ids = scored_ids(test / "el")
    check_apart(out, ids)
    assert sorted(scored_ids(test / "chain")) == sorted(ids)
    summary = json.loads((test / "el" / "summary.json").read_text())
    # the file's test split, not every line of it: nothing the designer saw had to be left out
    assert summary["split"] == {"source": "file", "by": "hash", "seed": 0, "split": "test"}
    assert summary["test_scorings"] == 1
    assert json.loads((test / "el" / "config.json").read_text())["exclude_ids"] == []
    # `kvmesh eval --designer` on the whole file (split all) leaves out what this fixed-graph designer saw
    whole = tmp_path / "whole"
    assert main(["eval", "infoqa", "--designer", str(out), *files[:2], "--out", str(whole)]) == 0
    seen = json.loads((out / "designer" / DESIGNER_FILE).read_text())["seen_ids"]
    assert len(seen) == 6 and not set(seen) & set(scored_ids(whole)) and len(scored_ids(whole)) == 60 - 6


def test_design_seeds_train_apart_resume_and_are_compared_paired_on_test(tiny, tmp_path, capsys):
    out, test = tmp_path / "gd", tmp_path / "test"
    train = ["design", "train", "infoqa", "--designer", "gdesigner", *TINY, *SMALL, "--hidden", "8", "--latent", "4"]
    train += ["--out", str(out)]
    assert main([*train, "--seeds", "0", "0"]) == 2 and "more than once" in capsys.readouterr().err
    assert main([*train, "--seeds", "0", "1", "--seed", "2"]) == 2 and "drop --seed" in capsys.readouterr().err
    assert not out.exists()
    train += ["--seeds", "0", "1"]
    assert main(train) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "validation/utility" in printed and "seeds.json" in printed

    folders = [out / f"seed-{seed}" for seed in (0, 1)]
    configs = [json.loads((f / "config.json").read_text())["run"] for f in folders]
    assert [c["seed"] for c in configs] == [0, 1] and [c["data_seed"] for c in configs] == [0, 0]
    weights = [torch.load(f / "designer" / WEIGHTS_FILE) for f in folders]
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])  # the seed matters
    splits = [json.loads((f / "splits.json").read_text()) for f in folders]
    assert splits[0]["train"] == splits[1]["train"] and splits[0]["validation"] == splits[1]["validation"]
    seeds = json.loads((out / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and set(seeds["across_seeds"]) == {
        f"validation/{name}" for name in ("score", "tokens", "calls", "utility")
    }
    assert all(figure["n"] == 2 for figure in seeds["across_seeds"].values())

    written = {path: path.stat().st_mtime_ns for f in folders for path in f.rglob("*") if path.is_file()}
    assert main([*train, "--resume"]) == 0  # both seeds finished: loaded, nothing trained or written again
    assert capsys.readouterr().out.count("not trained again") == 2
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert not {path for f in folders for path in f.rglob("*") if path.is_file()} - set(written)

    evaluate = ["design", "eval", "infoqa", "--designers", str(out), "--baselines", "chain", *TINY, "--limit", "3"]
    assert main([*evaluate, "--out", str(test)]) == 0, capsys.readouterr().err
    assert "McNemar exact p" in capsys.readouterr().out  # compare_report: each run paired with the first
    runs = ["chain", "gd-seed-0", "gd-seed-1"]
    ids = [sorted(scored_ids(test / run)) for run in runs]
    assert ids[0] == ids[1] == ids[2]
    assert check_apart(folders[0], ids[0]) == check_apart(folders[1], ids[0])  # the same data for both seeds
    paired = json.loads((test / "paired.json").read_text())["paired"]
    assert set(paired) == {"gd-seed-0", "gd-seed-1"}
    for run in ("gd-seed-0", "gd-seed-1"):
        comparison = paired[run]["chain"]
        assert comparison["n"] == 3 and 0 <= comparison["mcnemar_p"] <= 1
        own = {json.loads(line)["id"]: json.loads(line)["correct"] for line in (test / run / "samples.jsonl").open()}
        assert comparison["accuracy"]["other"] == pytest.approx(sum(own.values()) / 3)
    across = json.loads((test / "seeds-gd.json").read_text())
    assert across["runs"] == {"0": "gd-seed-0", "1": "gd-seed-1"}
    assert set(across["across_seeds"]) == {"test/accuracy", "test/total_tokens", "test/accuracy_difference/chain"}
    assert all(figure["n"] == 2 for figure in across["across_seeds"].values())
