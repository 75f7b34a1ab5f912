"""Calibrating a team's channels on training tasks, for the channels that ask for it (`Channel.wants_calibration`).

    team = calibrate(team, [s.task for s in benchmark.samples("train")[:16]])

For each such channel, a probe team (the same team, the channel's instance with the settings the channel asks
for) runs the tasks once while that instance records what it needs (`Channel.begin_calibration`); the channel
turns the record into new settings (`Channel.calibrate`), and the returned team carries them. kv-select is the
one that asks today: its probe reads every context in every layer, and its new settings hold calibration scores
per layer, which the team's spec saves, so a reloaded team is not calibrated again.

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
    """Whether any of the team's channels asks to be calibrated before use."""
    return any(channel.wants_calibration() for channel in team.channels.values())


def calibrate(team: Team, tasks: Sequence[Task], batch_size: int = 16, min_tasks: int = MIN_TASKS) -> Team:
    """`team` with every channel that can be calibrated (`Channel.calibrates`) calibrated on `tasks`, whether
    it asked for it or not (see the module)."""
    if not any(channel.calibrates for channel in team.channels.values()):
        names = ", ".join(sorted(team.channels))
        raise ValueError(f"none of the team's channels ({names}) can be calibrated: put such a channel on an edge")
    if len(tasks) < min_tasks:
        raise ValueError(f"calibration needs at least {min_tasks} training tasks, got {len(tasks)}")
    for name, channel in team.channels.items():
        if not channel.calibrates:
            continue

        def probe(settings: object, name: str = name, base: Team = team) -> Channel:
            probe_team = base.with_channels({name: settings})
            recorder = probe_team.channels[name]
            recorder.begin_calibration()
            for start in range(0, len(tasks), batch_size):
                probe_team.run_batch(list(tasks[start : start + batch_size]))
            return recorder

        team = team.with_channels({name: channel.calibrate(probe)})
        log.info("%s calibrated on %d tasks", name, len(tasks))
    return team


calibrate_kv_select = calibrate  # the name the README used when kv-select was the one channel that calibrates
