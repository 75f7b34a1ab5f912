"""The `kvmesh` command end to end, in a subprocess, on the real SmolLM2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kvmesh.evals.store import read_samples

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def kvmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmesh.cli", *args], capture_output=True, text=True, env=ENV)


@pytest.mark.slow
def test_run_json_on_smollm2():
    out = kvmesh(
        "run",
        "What is the capital of France?",
        "--agents",
        "2",
        "--topology",
        "chain",
        "--max-new-tokens",
        "24",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data["answer"], str) and data["answer"]
    assert [(m["agent"], m["round"]) for m in data["messages"]] == [
        ("agent_1", 0),
        ("agent_2", 0),
        ("decision", "decision"),
    ]
    shape = {"input_tokens", "output_tokens", "total_tokens", "input_token_details"}
    for message in data["messages"]:
        assert shape <= set(message["usage"]) and "<|im_start|>" in message["prompt"]
        assert message["usage"]["output_tokens"] <= 24
    usage = data["usage"]
    assert shape <= set(usage["total"])
    assert set(usage["per_agent"]) == {"agent_1", "agent_2", "decision"}
    assert "agent_1->agent_2" in usage["per_edge"] and set(usage["per_round"]) == {"0", "decision"}
    assert usage["total"]["total_tokens"] == sum(m["usage"]["total_tokens"] for m in data["messages"])


@pytest.mark.slow
def test_run_text_with_a_spec(tmp_path):
    spec = tmp_path / "team.yaml"
    spec.write_text("agents: [{name: solo, role: geographer, max_new_tokens: 16}]\ndecision: last\n")
    out = kvmesh("run", "What is the capital of France?", "--spec", str(spec))
    assert out.returncode == 0, out.stderr
    assert "[solo · round 0]" in out.stdout and "ANSWER:" in out.stdout and "TOTAL" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "Q?", "--agents", "0"), "--agents must be at least 1"),
        (("run", "Q?", "--rounds", "0"), "rounds must be a positive integer"),
        (("run", "Q?", "--model", "no-such-model"), "unknown model 'no-such-model'"),
        (("run", "Q?", "--spec", "/nonexistent/team.yaml"), "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    out = kvmesh(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unknown_topology_is_refused_by_the_parser():
    out = kvmesh("run", "Q?", "--topology", "ring")
    assert out.returncode == 2 and "invalid choice: 'ring'" in out.stderr


def test_eval_oracle_then_report(tmp_path):
    out = tmp_path / "oracle"
    done = kvmesh("eval", "infoqa", "--oracle", "--limit", "20", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout and "1.000" in done.stdout
    again = kvmesh("eval", "infoqa", "--oracle", "--limit", "20", "--out", str(out))
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = kvmesh("eval", "infoqa", "--oracle", "--limit", "20", "--out", str(out), "--resume")
    assert resumed.returncode == 0
    report = kvmesh("report", str(out), str(out))
    assert report.returncode == 0 and report.stdout.count("1.000 [") == 3 * 2  # accuracy, f1, answer_in_reply
    compare = kvmesh("eval", "--compare", str(out))
    assert compare.returncode == 0 and "samples" in compare.stdout


def test_eval_refuses_code_execution_without_consent(tmp_path):
    out = kvmesh("eval", "humaneval", "--oracle", "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and "--allow-code-execution" in out.stderr and "not a security boundary" in out.stderr
    missing = kvmesh("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "summary.json does not exist" in missing.stderr


def test_run_writes_its_graph_and_viz_draws_runs_and_files(tmp_path):
    picture = tmp_path / "team.svg"
    out = kvmesh("run", "Q?", "--model", "tiny-random", "--max-new-tokens", "4", "--json", "--graph-out", str(picture))
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)  # the picture's notice goes to stderr
    assert picture.read_text().lstrip().startswith("<?xml")

    run = tmp_path / "run"
    config = ["--model", "tiny-random", "--limit", "2", "--max-new-tokens", "4", "--agents", "2", "--out", str(run)]
    assert kvmesh("eval", "infoqa", *config).returncode == 0
    mermaid = tmp_path / "run.mmd"
    assert kvmesh("viz", str(run), "-o", str(mermaid)).returncode == 0
    text = mermaid.read_text()
    assert 'n_agent_1 -->|"' in text and " tok" in text and "n_decision" in text  # mean edge tokens per task

    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"agents": ["a", "b"], "edges": [{"source": "a", "target": "b"}]}))
    assert kvmesh("viz", str(graph), "-o", str(tmp_path / "g.dot")).returncode == 0
    assert "n_a -> n_b" in (tmp_path / "g.dot").read_text()
    refused = kvmesh("viz", str(graph), "-o", str(tmp_path / "g.gif"))
    assert refused.returncode == 2 and "cannot tell the format" in refused.stderr


def test_run_with_rounds_reads_the_previous_round_and_refuses_rounds_that_cannot_differ():
    args = ("run", "What is 17 * 3?", "--topology", "complete", "--agents", "3", "--rounds", "2")
    out = kvmesh(*args, "--model", "tiny-random", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout)["messages"]
    prompts = {(m["agent"], m["round"]): m["prompt"] for m in messages}
    assert all(prompts[f"agent_{i}", 1] != prompts[f"agent_{i}", 0] for i in (1, 2, 3))
    own = kvmesh(*args, "--temporal", "self", "--model", "tiny-random", "--max-new-tokens", "4", "--json")
    round_1 = [m["prompt"] for m in json.loads(own.stdout)["messages"] if m["round"] == 1]
    assert all(p.count("(previous round)") == 1 for p in round_1)  # each agent reads only itself
    refused = kvmesh(*args, "--temporal", "none", "--model", "tiny-random")
    assert refused.returncode == 2 and "no temporal edges" in refused.stderr and "--temporal" in refused.stderr


def test_library_log_lines_are_printed_once():
    script = (
        "import logging; from kvmesh.cli import configure_logging; configure_logging(); "
        "logging.getLogger('huggingface_hub').warning('hub says hi'); logging.getLogger('kvmesh.x').info('ours')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV)
    assert out.stderr.count("hub says hi") == 1, out.stderr
    assert "kvmesh: ours" in out.stderr


def test_flags_a_spec_would_ignore_are_refused(tmp_path):
    spec = tmp_path / "team.yaml"
    spec.write_text("model: tiny-random\nagents: [{name: solo, max_new_tokens: 2}]\ndecision: last\n")
    for command in (("run", "Q?"), ("eval", "infoqa", "--limit", "1", "--out", str(tmp_path / "r"))):
        out = kvmesh(*command, "--spec", str(spec), "--max-new-tokens", "64", "--rounds", "1")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "sets the team, so --rounds, --max-new-tokens would be ignored; set them in the spec" in out.stderr
    assert not (tmp_path / "r").exists()
    ok = kvmesh("run", "Q?", "--spec", str(spec), "--json")
    assert ok.returncode == 0, ok.stderr


def test_ctrl_c_in_eval_says_what_is_saved_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "infoqa", "--model", "tiny-random", "--limit", "200", "--batch-size", "1", "--agents", "2"]
    args += ["--max-new-tokens", "16", "--out", str(out)]  # long enough that the signal lands mid-run

    def default_ctrl_c() -> None:  # a child inherits an ignored SIGINT, and Python then leaves it ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    command = [sys.executable, "-m", "kvmesh.cli", *args]
    run = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_samples(out)) < 3:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    saved = len(read_samples(out))
    assert run.returncode == 130 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"kvmesh: interrupted: {saved} finished samples are saved in {out}; continue with: kvmesh eval"
    )
    assert line.endswith(f"--out {out} --resume")


def test_run_and_eval_share_defaults_and_a_spent_budget_says_why_there_is_no_answer():
    from dataclasses import fields

    from kvmesh.cli.run import RunConfig
    from kvmesh.evals.runner import EvalConfig

    run_defaults = {f.name: f.default for f in fields(RunConfig)}
    eval_defaults = {f.name: f.default for f in fields(EvalConfig)}
    for name in ("model", "topology", "agents", "rounds", "temporal", "max_new_tokens", "seed", "channel"):
        assert run_defaults[name] == eval_defaults[name], name
    out = kvmesh("run", "What is 17 * 3?", "--model", "tiny-random", "--token-budget", "5")
    assert out.returncode == 0, out.stderr
    assert "ANSWER: none: the token budget was spent before any agent could answer" in out.stdout


def test_kv_reuse_runs_say_why_nothing_was_reused_and_anchors_persist(tmp_path):
    args = ("run", "Q?", "--model", "tiny-random", "--max-new-tokens", "4", "--channel", "kv-reuse")
    alone = kvmesh(*args)
    assert alone.returncode == 0, alone.stderr
    assert "anchors start empty in each process: pass anchors_dir (--anchors DIR)" in alone.stdout
    kept = kvmesh(*args, "--anchors", str(tmp_path / "anchors"), "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["channels"]["kv-reuse"]["calls"] > 0
    assert (tmp_path / "anchors" / "manifest.json").is_file()  # saved for the next run
    refused = kvmesh("run", "Q?", "--anchors", str(tmp_path / "a"))
    assert (
        refused.returncode == 2
        and "--anchors: kv-reuse's settings mean nothing on text edges: use them with --channel kv-reuse"
        in refused.stderr
    )


def test_ray_is_a_flag_and_its_address_is_named_explicitly():
    """`kvmesh eval --ray infoqa` read infoqa as the Ray address; now --ray takes no value."""
    from kvmesh.cli import make_parser
    from kvmesh.cli.evaluate import EvalRun
    from kvmesh.cli.flags import config_from_args

    args = make_parser().parse_args(["eval", "--ray", "infoqa"])
    options = config_from_args(EvalRun, args)
    assert args.benchmark == "infoqa" and options.ray is True and options.ray_address is None
    args = make_parser().parse_args(["eval", "infoqa", "--ray-address", "10.0.0.1:6379"])
    assert config_from_args(EvalRun, args).ray_address == "10.0.0.1:6379"


def test_run_explains_what_each_channel_needs_and_what_a_silent_sender_did(capsys):
    from kvmesh.cli import main
    from kvmesh.kvcomm.channel import available_channels

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{name}: " in help_text for name in available_channels())  # every channel, not text and kv-reuse
    assert "needs a mapper: --c2c-mapper DIR" in help_text
    assert main(["run", "Where is the key?", "--model", "tiny-random", "--channel", "c2c"]) == 2
    assert "--c2c-mapper DIR" in capsys.readouterr().err
    main(["run", "Where is the key?", "--model", "tiny-random", "--channel", "kv-select", "--agents", "2",
          "--max-new-tokens", "3"])  # fmt: skip
    assert "[agent_1 · round 0] (prefilled only: its receivers read its prompt's KV cache" in capsys.readouterr().out


def test_run_and_eval_take_a_channel_variant_and_refuse_one_that_names_nothing(tiny, capsys, tmp_path):
    from kvmesh.cli import main

    question = ["Where is the key?", "--model", "tiny-random", "--agents", "2", "--max-new-tokens", "3"]
    assert main(["run", *question, "--channel", "kv-select@100+t2"]) == 0
    out = capsys.readouterr().out
    assert "kv-select@100+t2: calls 2" in out  # the variant's own statistics
    with pytest.raises(SystemExit):
        main(["run", *question, "--channel", "text@3"])
    assert "channel 'text' has no variants" in capsys.readouterr().err
    args = ["eval", "infoqa", "--model", "tiny-random", "--limit", "2", "--max-new-tokens", "3"]
    assert main([*args, "--channel", "kv-select@50", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["config"]["channel"] == "kv-select@50"
    assert summary["kv_select"]["engine"]["calls"] > 0  # the variant's own statistics reach the summary
    with pytest.raises(SystemExit):
        main([*args, "--channel", "kv-select@half", "--out", str(tmp_path / "bad")])
    assert "not a kv-select variant" in capsys.readouterr().err
