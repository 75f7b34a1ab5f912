"""Where `kvmesh eval` runs its samples: in this process, or spread over Ray actors.

    LocalExecutor   `run_chunk` here, on the team this process built
    RayExecutor     chunks of `batch_size` samples handed to Ray actors as they free up; each actor builds the
                    team once (its own models, or clients of a server: `openai:` specs) and sends back each
                    chunk's sample lines; the driver stays the single writer of samples.jsonl

An actor that dies (its process killed, its node lost) loses only the chunk it was running: that chunk goes back
to the queue, whole, for another actor, and a fresh actor takes the dead one's place (up to `restarts` times).
Since a chunk's lines come back together, a line is written once or not at all: nothing is lost or duplicated,
and `--resume` works across Ray and local runs (the store says what is finished, whoever ran it).

kv-reuse anchors live in the process that learnt them: each actor learns its own, and the summary merges the
actors' channel statistics (`merge_channel_stats`: counts added, rates recomputed, how many workers learnt
anchors). A channel setting that names a folder the channel writes (`--anchors DIR`: one folder every process
would write) is refused with Ray.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvmesh.config import ConfigError
from kvmesh.kvcomm.settings import setting_key, written_settings

log = logging.getLogger("kvmesh")
LOCAL = "local"  # `--ray` without an address: start a Ray instance on this machine
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch for its token authentication
# Ray's switch for a node that joins clusters: "0" gives the local instance a loopback node address, so every
# server it starts (GCS, raylet, workers) listens on 127.0.0.1 only. Ray reads it when `ray` is first imported.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
NAMESPACE = "kvmesh"


class Work(Protocol):
    """One evaluation's work (`kvmesh.evals.runner.EvalWork`): picklable, so it runs in any process."""

    config: object

    def run(self, samples: Sequence) -> Iterator[dict]:
        """Sample lines as each finishes."""

    def team_stats(self) -> dict:
        """The channel statistics of the team this process ran."""


class LocalExecutor:
    """Runs samples in this process."""

    used = 1  # workers the last run had

    def lines(self, work: Work, samples: Sequence) -> Iterator[dict]:
        yield from work.run(samples)

    def channel_stats(self, team) -> dict | None:
        return team.channel_stats() if team is not None else None


class EvalWorker:
    """One Ray actor: runs chunks of evaluations (`run_chunk` builds a run's team once per process and keeps it)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)

    def run(self, work: Work, samples: Sequence) -> list[dict]:
        return list(work.run(samples))

    def channel_stats(self, work: Work) -> dict:
        return work.team_stats()


@dataclass
class RayExecutor:
    """Spreads chunks over `workers` Ray actors; see the module docstring.

    Args:
        address: a Ray cluster's address, or "local" to start an instance on this machine.
        workers: actors (default: one per CPU Ray has, `threads` each).
        threads: torch threads per actor.
        restarts: dead actors replaced before the run gives up.
    """

    address: str = LOCAL
    workers: int | None = None
    threads: int = 1
    restarts: int = 3

    def __post_init__(self) -> None:
        self.pool: deque = deque()  # idle actors, kept for the next evaluation (`close` ends them)
        self.running: dict = {}  # ref -> (actor, chunk): what is out now
        self.deaths = 0
        self.used = 0  # workers the last run had

    def lines(self, work: Work, samples: Sequence) -> Iterator[dict]:
        written = written_settings(work.config.channels)
        if written:
            names = ", ".join(f"{{{setting_key(channel, setting)}}}" for channel, setting in written)
            raise ConfigError(
                f"{names} is one folder that every process would write; with --ray each worker learns its own "
                "(the summary merges their statistics): drop it, or run without --ray"
            )
        ray = start_ray(self.address)
        count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        while len(self.pool) < min(count, max(1, len(samples))):
            self.pool.append(self._spawn(ray))
        self.used = len(self.pool)
        log.info("ray: %d workers at %s", self.used, ray.get_runtime_context().gcs_address)
        size = work.config.batch_size
        queue = deque(list(samples[start : start + size]) for start in range(0, len(samples), size))
        self.running.clear()
        while queue or self.running:
            while queue and self.pool:
                worker, chunk = self.pool.popleft(), queue.popleft()
                self.running[worker.run.remote(work, chunk)] = (worker, chunk)
            (ready,), _ = ray.wait(list(self.running), num_returns=1)
            worker, chunk = self.running.pop(ready)
            try:
                lines = ray.get(ready)
            except ray.exceptions.RayTaskError as error:  # the run itself failed there: the same error here
                self.pool.append(worker)
                raise error.as_instanceof_cause() from None
            except ray.exceptions.RayActorError as error:
                self.deaths += 1
                if self.deaths > self.restarts:
                    raise RuntimeError(
                        f"{self.deaths} Ray workers died ({error}); the finished samples are saved: rerun with --resume"
                    ) from error
                log.warning("ray: a worker died (%s); its %d samples run again on a fresh one", error, len(chunk))
                queue.appendleft(chunk)
                self.pool.append(self._spawn(ray))
                continue
            self.pool.append(worker)
            yield from lines
        self.stats = merge_channel_stats(ray.get([worker.channel_stats.remote(work) for worker in self.pool]))

    def _spawn(self, ray):
        actor = ray.remote(num_cpus=self.threads, max_restarts=0)(EvalWorker)
        return actor.options(namespace=NAMESPACE).remote(self.threads)

    def channel_stats(self, team) -> dict | None:
        return getattr(self, "stats", None)

    def close(self) -> None:
        """End the pool's actors (Ray also ends them when this process ends)."""
        import ray

        for worker in self.pool:
            ray.kill(worker)
        self.pool.clear()


def start_ray(address: str = LOCAL):
    """Ray, initialised: `LOCAL` starts an instance sized to this machine whose servers listen on loopback only;
    any other address joins that cluster. Returns the `ray` module."""
    if address != LOCAL:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, namespace=NAMESPACE)
        return ray
    if os.environ.get(AUTH_MODE, "token").strip().lower() != "token":  # Ray: anything else is off
        log.warning(
            "%s=%s: the local Ray instance accepts any process on this machine that reaches its ports; unset it to "
            "require Ray's token",
            AUTH_MODE,
            os.environ[AUTH_MODE],
        )
    # a user's own setting wins; Ray reads it at import, so the import is inside too
    with _environment(CLUSTER_SWITCH, os.environ.get(CLUSTER_SWITCH, "0")):
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node).is_loopback:
        log.warning(
            "ray: the local instance listens on %s, which other machines can reach (Ray was imported before kvmesh "
            "could ask for loopback, or %s=%s); it still requires Ray's token",
            node,
            CLUSTER_SWITCH,
            os.environ.get(CLUSTER_SWITCH),
        )
    return ray


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise ConfigError("{ray} needs Ray: pip install 'kvmesh[ray]'") from error
    return ray


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`name`=`value` in this process's environment for the block (the Ray processes started in it inherit it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def merge_channel_stats(per_worker: Sequence[dict]) -> dict:
    """Channel statistics of several workers as one: counts and sizes added, rates recomputed from the counts,
    settings kept, and for kv-reuse how many workers learnt anchors."""
    merged: dict = {}
    for stats in per_worker:
        for channel, values in stats.items():
            into = merged.setdefault(channel, {"workers": 0})
            into["workers"] += 1
            for key, value in values.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    into.setdefault(key, value)  # settings, notes, layer choices: the same everywhere
                else:
                    into[key] = into.get(key, 0) + value
            if values.get("anchors"):
                into["workers_with_anchors"] = into.get("workers_with_anchors", 0) + 1
    for values in merged.values():
        if "calls" in values and "reused_calls" in values:
            values["reuse_rate"] = values["reused_calls"] / values["calls"] if values["calls"] else 0.0
    return merged
