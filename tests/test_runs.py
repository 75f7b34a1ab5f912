"""The run folder's contract (`kvmesh.runs`): fresh or resume, a changed configuration refused by name, a failed
start that leaves nothing behind, atomic files that survive a crash mid-write, and durable append-only logs."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kvmesh.runs
from kvmesh.config import ConfigError
from kvmesh.runs import (
    CONFIG,
    Comparison,
    RunChangedError,
    RunExistsError,
    RunFolderError,
    Wording,
    append_jsonl,
    check_resume,
    content_hash,
    open_config,
    read_log,
    repair_log,
    rewrite_jsonl,
    start_run,
    write_atomic,
    write_json,
)

# kvmesh.runs imports only kvmesh.config: a child process skips the package's own imports (torch, transformers)
# by standing in for the package with an empty one, so a kill test starts in a fraction of a second
LIGHT = f"""
import sys, types
package = types.ModuleType("kvmesh")
package.__path__ = [{str(Path(kvmesh.runs.__file__).parent)!r}]
sys.modules["kvmesh"] = package
"""
SETTINGS = {"model": "tiny-random", "seed": 0, "team": {"agents": 3, "graph": "chain"}}


def test_a_fresh_folder_saves_its_settings_and_the_same_settings_resume(tmp_path):
    out = tmp_path / "run"
    opened = open_config(out, SETTINGS, resume=False)
    assert not opened.resumed and json.loads((out / CONFIG).read_text()) == SETTINGS
    assert open_config(out, SETTINGS, resume=True).resumed
    assert not open_config(tmp_path / "other", SETTINGS, resume=True).resumed  # resume of nothing: a fresh start
    with pytest.raises(RunExistsError, match=r"holds a run already; resume it \(pass --resume\)") as refused:
        open_config(out, SETTINGS, resume=False)
    assert isinstance(refused.value, FileExistsError) and isinstance(refused.value, ConfigError)


def test_a_changed_setting_is_refused_naming_each_field_and_the_fix(tmp_path):
    out = tmp_path / "run"
    open_config(out, SETTINGS, resume=False)
    changed = {**SETTINGS, "seed": 1, "team": {"agents": 4, "graph": "chain"}, "new": True}
    with pytest.raises(RunChangedError) as refused:
        open_config(out, changed, resume=True)
    assert refused.value.changed == ["new", "seed", "team.agents"]
    assert str(refused.value) == (
        f"{out} holds a run with other settings (new, seed, team.agents); use the settings it started with, or "
        "pick another --out"
    )
    assert json.loads((out / CONFIG).read_text()) == SETTINGS  # the saved run is untouched


def test_declared_exceptions_resume_and_everything_else_is_a_change(tmp_path):
    saved = {"a": 1, "where": "x", "recorded": 2}
    rules = Comparison(defaults={"b": 0}, optional=("recorded",), ignore=("where",), allowed=("a",))
    assert check_resume(tmp_path, saved, {"a": 1, "b": 0, "where": "y"}, True, rules=rules) == []
    assert check_resume(tmp_path, saved, {"a": 5, "b": 0}, True, rules=rules) == ["a"]  # allowed: returned
    with pytest.raises(RunChangedError, match=r"other settings \(b\)"):  # not the default of an added setting
        check_resume(tmp_path, saved, {"a": 1, "b": 1}, True, rules=rules)
    with pytest.raises(RunChangedError, match=r"other settings \(recorded\)"):  # both hold it: compared
        check_resume(tmp_path, saved, {"a": 1, "b": 0, "recorded": 3}, True, rules=rules)


def test_a_commands_words_show_its_flags_on_the_command_line(tmp_path):
    words = Wording("fuser run", resume="pass {resume}", out="{out}")
    with pytest.raises(RunExistsError) as refused:
        check_resume(tmp_path / "a{b}", {}, {}, False, words)
    flags = refused.value.render(lambda name: f"--{name}")
    assert flags == f"{tmp_path}/a{{b}} holds a fuser run already; resume it (pass --resume) or pick another --out"


def test_a_failed_fresh_start_leaves_nothing_so_the_corrected_retry_starts(tmp_path):
    out = tmp_path / "run"

    def start(settings):
        return start_run(out, lambda: open_config(out, settings, resume=True))

    with pytest.raises(RuntimeError), start(SETTINGS):
        (out / "partial").mkdir()
        (out / "partial" / "team.json").write_text("{}")
        raise RuntimeError("the model does not load")
    assert not out.exists()
    corrected = {**SETTINGS, "model": "smollm2-135m"}
    with start(corrected) as opened:
        assert not opened.resumed
        append_jsonl(out / "samples.jsonl", [{"id": 1}])
    with pytest.raises(KeyboardInterrupt), start(corrected):  # a resumed run is never discarded
        raise KeyboardInterrupt
    assert read_log(out / "samples.jsonl") == [{"id": 1}]


def test_a_failed_start_keeps_results_and_what_was_there_before(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), start_run(out, lambda: open_config(out, SETTINGS, resume=False)):
        raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(RuntimeError), start_run(out, lambda: open_config(out, SETTINGS, resume=False)):
        (out / "sub").mkdir()
        append_jsonl(out / "sub" / "log.jsonl", [{"done": 1}])  # a result, at any depth
        raise RuntimeError
    assert (out / CONFIG).is_file()  # a result was saved: the run stays, to be resumed


CRASHING_WRITER = (
    LIGHT
    + """
from kvmesh.runs import write_atomic

def write(file):
    file.write(b"half of the new")
    file.flush()
    print("writing", flush=True)
    sys.stdin.readline()  # killed here

write_atomic(sys.argv[1], write)
"""
)


def test_a_crash_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"old": True})
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert json.loads(path.read_text()) == {"old": True}
    (stray,) = [p.name for p in tmp_path.iterdir() if p.name != "results.json"]  # what a hard kill leaves
    assert stray.startswith(".results.json.") and stray.endswith(".tmp")

    def interrupted(file):
        file.write(b"{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an exception removes its temporary file
        write_atomic(path, interrupted)
    assert json.loads(path.read_text()) == {"old": True} and len(list(tmp_path.iterdir())) == 2
    write_json(path, {"new": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"new": "é"}


APPENDER = (
    LIGHT
    + """
from kvmesh.runs import append_jsonl
for i in range(100000):
    append_jsonl(sys.argv[1], [{"i": i, "pad": "x" * 3000}])
"""
)


def test_appended_rows_survive_a_kill_and_a_torn_tail_is_cut_on_resume(tmp_path):
    path = tmp_path / "log.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(read_log(path)) < 50:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    rows = read_log(path)
    assert len(rows) >= 50 and [row["i"] for row in rows] == list(range(len(rows)))
    with open(path, "ab") as handle:
        handle.write(b'{"i": -1, "pa')  # a torn last line: readers skip it
    assert read_log(path) == rows
    assert repair_log(path) == len(b'{"i": -1, "pa') and path.read_bytes().endswith(b"}\n")
    with open(path, "ab") as handle:
        handle.write(b'{"i": -1\n')  # complete but not JSON: cut too
    assert repair_log(path) == len(b'{"i": -1\n')
    append_jsonl(path, [{"i": len(rows)}])
    assert [row["i"] for row in read_log(path)] == list(range(len(rows) + 1))


def test_a_corrupt_line_inside_a_log_is_an_error_naming_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunFolderError, match=rf"^{path}:2 is not valid JSON"):
        read_log(path)
    assert repair_log(path) == 0  # only a torn last line is a writer's to cut
    rewrite_jsonl(path, [{"a": 1}])
    assert read_log(path) == [{"a": 1}]
    assert read_log(tmp_path / "none.jsonl") == []


def test_content_hash_changes_with_a_files_bytes_and_a_folders_names(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("x")
    first = content_hash(tmp_path / "d")
    (tmp_path / "d" / "a").rename(tmp_path / "d" / "b")
    assert content_hash(tmp_path / "d") != first
    (tmp_path / "f").write_text("x")
    before = content_hash(tmp_path / "f")
    (tmp_path / "f").write_text("y")
    assert content_hash(tmp_path / "f") != before
