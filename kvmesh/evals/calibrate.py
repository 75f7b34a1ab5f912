"""Calibrating a team's channels on training tasks, for the channels that ask for it (`Channel.wants_calibration`).

    team = calibrate(team, [s.task for s in benchmark.samples("train")[:16]])

For each such channel, a probe team (the same team, the channel's instance with the settings the channel asks
for) runs the tasks once while that instance records what it needs (`Channel.begin_calibration`); the channel
turns the record into new settings (`Channel.calibrate`), and the returned team carries them. kv-select is the
one that asks today: its probe reads every context in every layer, and its new settings hold calibration scores
per layer, which the team's spec saves, so a reloaded team is not calibrated again.

Only the channels of the team's own graph (and decision) are calibrated, on that graph: a designer's further
channels run as the designer trained with them (it never calibrated them).

Caveats: calibrate on a training split, never on the tasks you score; at least `MIN_TASKS` tasks (KVComm's
setting).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.kvcomm.channel import Channel

log = logging.getLogger("kvmesh")
MIN_TASKS = 16


def needs_calibration(team: Team) -> bool:
    """Whether any channel of the team's own graph asks to be calibrated before use."""
    return any(team.channels[name].wants_calibration() for name in team.graph_channels())


def calibrate(team: Team, tasks: Sequence[Task], batch_size: int = 16, min_tasks: int = MIN_TASKS) -> Team:
    """`team` with every channel that can be calibrated (`Channel.calibrates`) calibrated on `tasks`, whether
    it asked for it or not (see the module)."""
    own = sorted(team.graph_channels())
    if not any(team.channels[name].calibrates for name in own):
        raise ValueError(
            f"none of the channels of the team's graph ({', '.join(own)}) can be calibrated: put such a channel on "
            "an edge"
        )
    if len(tasks) < min_tasks:
        raise ValueError(f"calibration needs at least {min_tasks} training tasks, got {len(tasks)}")
    for name in own:
        channel = team.channels[name]
        if not channel.calibrates:
            continue

        def probe(settings: object, name: str = name, base: Team = team) -> Channel:
            probe_team = base.with_channels({name: settings})
            recorder = probe_team.channels[name]
            recorder.begin_calibration()
            for start in range(0, len(tasks), batch_size):
                chunk = list(tasks[start : start + batch_size])
                probe_team.run_batch(chunk, graphs=[probe_team.graph] * len(chunk))  # its own graph, not a designer's
            return recorder

        team = team.with_channels({name: channel.calibrate(probe)})
        log.info("%s calibrated on %d tasks", name, len(tasks))
    return team


calibrate_kv_select = calibrate  # the name the README used when kv-select was the one channel that calibrates
