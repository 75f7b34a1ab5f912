import json
import signal
import subprocess
import sys
import time

import pytest

from kvmesh.evals.store import RunDirectoryError, open_run, read_samples

CONFIG = {"benchmark": "infoqa", "model": "tiny-random", "seed": 0}


def test_new_run_then_resume_skips_finished_ids(tmp_path):
    out = tmp_path / "run"
    with open_run(out, CONFIG, resume=False) as store:
        store.add({"id": "a", "correct": True})
        store.add({"id": "b", "correct": False})
        with pytest.raises(ValueError, match="'a' is already"):
            store.add({"id": "a", "correct": True})
    assert json.loads((out / "config.json").read_text()) == CONFIG
    with pytest.raises(RunDirectoryError, match="pass --resume"):
        open_run(out, CONFIG, resume=False)
    with pytest.raises(RunDirectoryError, match=r"changed: seed\)"):
        open_run(out, {**CONFIG, "seed": 1}, resume=True)
    with open_run(out, CONFIG, resume=True) as store:
        assert store.pending(["a", "b", "c"]) == ["c"]
        store.add({"id": "c", "correct": True})
    assert [row["id"] for row in read_samples(out)] == ["a", "b", "c"]


@pytest.mark.parametrize("tail", [b'{"id": "c", "corr', b'{"id": "c", "corr\n'])
def test_a_torn_last_line_is_cut_on_resume(tmp_path, tail):
    out = tmp_path / "run"
    with open_run(out, CONFIG, resume=False) as store:
        store.add({"id": "a"})
        store.add({"id": "b"})
    with open(out / "samples.jsonl", "ab") as handle:
        handle.write(tail)  # the process died in the middle of writing sample c
    with open_run(out, CONFIG, resume=True) as store:
        assert store.pending(["a", "b", "c"]) == ["c"]
        store.add({"id": "c"})
    assert [row["id"] for row in read_samples(out)] == ["a", "b", "c"]


WRITER = """
import sys, time
from kvmesh.evals.store import open_run
store = open_run(sys.argv[1], {"benchmark": "x"}, resume=sys.argv[2] == "resume")
for i in store.pending([str(i) for i in range(200)]):
    store.add({"id": i, "payload": "x" * 2000})
    time.sleep(0.005)
"""


def test_sigkill_halfway_then_resume_loses_nothing_and_duplicates_nothing(tmp_path):
    out = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "new"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(read_samples(out)) < 60:
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    finished = len(read_samples(out))  # what was durably written before the kill
    assert 0 < finished < 200
    subprocess.run([sys.executable, "-c", WRITER, str(out), "resume"], check=True)
    ids = [row["id"] for row in read_samples(out)]
    assert ids == [str(i) for i in range(200)]  # every sample exactly once, in order


def test_one_writer_at_a_time_and_readers_skip_a_half_written_line(tmp_path):
    from kvmesh.evals.store import RunDirectoryError

    out = tmp_path / "run"
    with open_run(out, CONFIG, resume=False) as store:
        store.add({"id": "a"})
        with pytest.raises(RunDirectoryError, match="another process is writing"):
            open_run(out, CONFIG, resume=True)
        with open(out / "samples.jsonl", "a") as handle:
            handle.write('{"id": "b", "ans')  # a writer in the middle of a line
        assert [row["id"] for row in read_samples(out)] == ["a"]
    with open_run(out, CONFIG, resume=True) as store:  # the lock is free again, and the torn line is cut
        assert store.pending(["a", "b"]) == ["b"]


def test_a_setting_added_later_resumes_old_runs_only_at_its_default(tmp_path):
    out = tmp_path / "run"
    with open_run(out, CONFIG, resume=False) as store:
        store.add({"id": "a"})
    newer = {**CONFIG, "exclude_ids": []}
    with open_run(out, newer, resume=True, defaults={"exclude_ids": []}) as store:
        assert store.pending(["a", "b"]) == ["b"]
    with pytest.raises(RunDirectoryError, match="exclude_ids"):
        open_run(out, {**CONFIG, "exclude_ids": ["x"]}, resume=True, defaults={"exclude_ids": []})
    with pytest.raises(RunDirectoryError, match="exclude_ids"):
        open_run(out, newer, resume=True)  # without the declared default it is a change
