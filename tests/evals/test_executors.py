"""Evaluation on Ray: the same samples and scores as a local run, one writer, and an actor killed mid-run loses
nothing and duplicates nothing; `--resume` works across Ray and local runs."""

import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kvmesh.config import ConfigError
from kvmesh.evals.executors import RayExecutor, merge_channel_stats
from kvmesh.evals.runner import EvalConfig, run_eval
from kvmesh.evals.store import read_samples

SETTINGS = {"model": "tiny-random", "topology": "chain", "agents": 2, "limit": 8, "batch_size": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def ray_local():
    import ray  # `make test` installs it (.[ray])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="kvmesh-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_local):
    """Two workers, kept across the tests' runs (starting an actor costs seconds)."""
    pool = RayExecutor(workers=2)
    yield pool
    pool.close()


def _by_id(folder) -> dict:
    rows = read_samples(folder)
    return {row["id"]: (row["answer"], row["correct"], row["usage"]["total"]["total_tokens"]) for row in rows}


def test_a_ray_run_gives_the_local_run_s_samples(executor, tmp_path):
    config = EvalConfig("infoqa", **SETTINGS)
    local = run_eval(config, tmp_path / "local", progress=False)
    spread = run_eval(config, tmp_path / "ray", progress=False, executor=executor)
    assert spread["workers"] == 2 and local["workers"] == 1
    assert _by_id(tmp_path / "ray") == _by_id(tmp_path / "local")
    assert spread["metrics"] == local["metrics"]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_local, executor, tmp_path, caplog):
    config = EvalConfig("infoqa", **SETTINGS)
    deaths = executor.deaths
    out = tmp_path / "run"
    done = threading.Thread(target=run_eval, args=(config, out), kwargs={"progress": False, "executor": executor})
    done.start()
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 120
    while not (samples.exists() and samples.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    while not executor.running and time.monotonic() < deadline:
        time.sleep(0.01)
    worker, _ = next(iter(executor.running.values()))  # a worker with a chunk out now
    ray_local.kill(worker)
    done.join(timeout=300)
    ids = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == SETTINGS["limit"]  # none lost, none twice
    assert executor.deaths == deaths + 1 and "a worker died" in caplog.text and len(executor.pool) == 2


def test_resume_works_across_ray_and_local_runs(executor, tmp_path):
    config = EvalConfig("infoqa", **SETTINGS)
    out = tmp_path / "run"
    run_eval(config, out, progress=False, executor=executor)
    finished = _by_id(out)
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:5]) + "\n")  # as if the Ray run had stopped there
    summary = run_eval(config, out, resume=True, progress=False)  # the rest, locally
    assert _by_id(out) == finished and summary["samples"] == SETTINGS["limit"]


def test_anchors_are_refused_with_ray(executor, tmp_path):
    anchors = {"kv-reuse": {"anchors_dir": str(tmp_path / "anchors")}}
    config = EvalConfig("infoqa", channel="kv-reuse", channels=anchors, **SETTINGS)
    with pytest.raises(ConfigError, match="every process would write"):
        run_eval(config, tmp_path / "run", progress=False, executor=executor)


def test_worker_statistics_merge_into_one():
    first = {"kv-reuse": {"calls": 4, "reused_calls": 1, "reuse_rate": 0.25, "anchors": 2, "config": {"a": 1}}}
    second = {"kv-reuse": {"calls": 6, "reused_calls": 5, "reuse_rate": 0.83, "anchors": 0, "config": {"a": 1}}}
    merged = merge_channel_stats([first, second])["kv-reuse"]
    assert merged["calls"] == 10 and merged["reused_calls"] == 6 and merged["reuse_rate"] == 0.6
    assert merged["workers"] == 2 and merged["workers_with_anchors"] == 1 and merged["config"] == {"a": 1}


# Starts kvmesh's local Ray instance in a fresh interpreter (Ray reads its node address setting at import) with a
# worker running, and prints every address a process of that instance listens on.
LISTENERS = textwrap.dedent(
    """
    import json, sys, time, psutil
    if sys.argv[1] == "early":
        import ray  # before kvmesh could ask for loopback
    from kvmesh.evals.executors import start_ray

    ray = start_ray()
    busy = ray.remote(lambda: time.sleep(3)).remote()  # a worker process too, not only GCS and raylet
    time.sleep(2)
    processes = psutil.Process().children(recursive=True)
    addresses = sorted({c.laddr.ip for p in processes for c in p.net_connections("inet") if c.status == "LISTEN"})
    ray.get(busy)
    print(json.dumps(addresses))
    """
)


def _listeners(when: str) -> tuple[list[str], str]:
    """The non-loopback addresses the local instance listens on, and the log."""
    done = subprocess.run([sys.executable, "-c", LISTENERS, when], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    addresses = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(addresses) >= 1  # GCS, raylet and the worker listen somewhere
    return [a for a in addresses if not ipaddress.ip_address(a.removeprefix("::ffff:")).is_loopback], done.stderr


def _needs_a_network_interface() -> None:
    """Ray listens on loopback anyway on a machine with no other interface: nothing to test there."""
    import psutil

    addresses = [a.address for found in psutil.net_if_addrs().values() for a in found if a.family == socket.AF_INET]
    if all(ipaddress.ip_address(a).is_loopback for a in addresses):
        pytest.skip("this machine has no network interface besides loopback, so Ray cannot listen anywhere else")


def test_the_local_ray_instance_listens_on_loopback_only():
    _needs_a_network_interface()
    wide, log = _listeners("first")
    assert not wide, f"Ray listens on {wide}, reachable from other machines"
    assert "other machines can reach" not in log


def test_a_ray_imported_too_early_to_stay_on_loopback_is_reported():
    # Ray chose its node address at import, before start_ray could ask: it listens on the network interface, and
    # the log says so, naming the switch
    _needs_a_network_interface()
    wide, log = _listeners("early")
    assert wide and "other machines can reach" in log and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in log
