"""Calibrating `kv-select`'s layer choice on training tasks: where a receiver's attention falls on its sender's context.

    team = calibrate_kv_select(team, [s.task for s in benchmark.samples("train")[:16]])

The team runs the tasks once with every layer reading every context (the dense read, exactly), its kv-select
channel recording each (context ids, receiver ids) pair it placed; `kvmesh.kvcomm.kv_select.layers.context_attention`
averages the attention mass the receivers' tokens put on the contexts per layer over those pairs, and the
result is the returned team's `KVSelectConfig.scores`. A team's spec saves the scores, so a reloaded team
chooses the same layers without calibrating again.

Caveats: calibrate on a training split, never on the tasks you score; one model per team's kv-select edges
(the scores are one per layer of one model); at least `MIN_TASKS` tasks (KVComm's setting).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.kvcomm.kv_select.channel import NAME as KV_SELECT
from kvmesh.kvcomm.kv_select.layers import context_attention

log = logging.getLogger("kvmesh")
MIN_TASKS = 16


def needs_calibration(team: Team) -> bool:
    """Whether the team reads over kv-select with neither fixed layers nor calibration scores."""
    channel = team.channels.get(KV_SELECT)
    return channel is not None and channel.config.layers is None and channel.config.scores is None


def calibrate_kv_select(team: Team, tasks: Sequence[Task], batch_size: int = 16, min_tasks: int = MIN_TASKS) -> Team:
    """`team` with its kv-select layers chosen on calibration scores measured on `tasks` (see the module)."""
    if KV_SELECT not in team.channels:
        raise ValueError("the team has no kv-select edge to calibrate; set channel='kv-select' on an edge first")
    if len(tasks) < min_tasks:
        raise ValueError(f"kv-select calibration needs at least {min_tasks} training tasks, got {len(tasks)}")
    settings = team.channels[KV_SELECT].config
    probe = team.with_channels({KV_SELECT: replace(settings, layers=None, fraction=1.0, scores=None)})
    recorder = probe.channels[KV_SELECT]
    recorder.record = True
    for start in range(0, len(tasks), batch_size):
        probe.run_batch(list(tasks[start : start + batch_size]))
    models = {agent.llm.spec: agent.llm for agent in probe.members if agent.llm.spec in recorder.layers_by_spec()}
    if len(models) != 1:
        raise ValueError(f"kv-select calibration needs one model on its edges, the team reads over {sorted(models)}")
    if not recorder.pairs:
        raise ValueError("no turn read a kv-select context on the calibration tasks: check the team's edges")
    (model,) = models.values()
    scores = context_attention(model.model, recorder.pairs)
    log.info("kv-select calibrated on %d pairs from %d tasks", len(recorder.pairs), len(tasks))
    return team.with_channels({KV_SELECT: replace(settings, scores=tuple(float(s) for s in scores))})
