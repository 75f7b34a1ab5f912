"""Team specs: a team described in YAML or JSON, loaded by `Team.from_spec` and written by `Team.save_spec`.

    model: smollm2-135m            # default model for agents that name none
    rounds: 2
    decision: majority             # decision | majority | last | {name, role, ..., channel: kv-reuse}
    token_budget: 4000             # optional
    agents:
      - {name: solver, role: math solver, max_new_tokens: 128}
      - {name: critic, role: critic, system_prompt: "Check the solver's arithmetic."}
      - {name: judge, role: judge, adapter: runs/optima/iter2/judge}   # a LoRA adapter folder (optional)
    graph: chain                   # a preset name, or {preset: layered, options: {layers: 2, temporal: self}},
                                   # or {edges: [{source, target, kind, channel, weight}]}
    reuse: {gamma: 0.3}            # optional kv-reuse engine settings (kvmesh.kvcomm.ReuseConfig)
    channels: {kv-reuse: {gamma: 0.3}}   # optional settings of any channel, by name (reuse: is kv-reuse's)
    designer: runs/design/agp/designer   # optional: a saved topology designer chooses each task's graph
                                         # (relative paths, here and in `adapter`, are relative to the spec
                                         # file; written specs hold absolute ones)
    seen_ids: [infoqa-train-0-3, ...]    # optional: task ids the team was trained or chosen on (a training
                                         # loop writes them); `kvmesh eval --spec` leaves those tasks out

Written specs always list explicit edges, so a round trip reproduces the exact graph. A designer lives above
this package (`kvmesh.topology`), so reading a spec that names one takes a `designer_loader`
(`kvmesh.cli.specs.load_team` passes `kvmesh.topology.load_designer`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from kvmesh.agents.agent import DEFAULT_MODEL, Agent
from kvmesh.agents.decision import DECISION_METHOD
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import settings_of

TOP_LEVEL_FIELDS = {
    "model",
    "rounds",
    "decision",
    "token_budget",
    "seed",
    "agents",
    "graph",
    "reuse",
    "channels",
    "designer",
    "seen_ids",
}


class SpecError(ValueError):
    """A team spec that cannot be read; the message names the file and the field."""


def _read(path: Path) -> dict:
    if not path.exists():
        raise SpecError(f"team spec {path} does not exist")
    if not path.is_file():
        raise SpecError(f"team spec {path} is not a file; pass the path of a .yaml or .json team spec")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecError(f"team spec {path} does not parse: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(f"team spec {path} must be a mapping with an 'agents' list")
    return data


def _graph(value, names: list[str], rounds) -> CommGraph:
    rounds = rounds if isinstance(rounds, int) else 1  # a bad value is Team's to report
    if value is None:
        return CommGraph.preset("chain", names, rounds=rounds)
    if isinstance(value, str):
        return CommGraph.preset(value, names, rounds=rounds)
    if isinstance(value, dict) and "preset" in value:
        return CommGraph.preset(value["preset"], names, rounds=rounds, **(value.get("options") or {}))
    if isinstance(value, dict) and "edges" in value:
        return CommGraph(value.get("agents", names), value["edges"])
    raise SpecError("'graph' must be a preset name, {preset: NAME, options: {...}} or {edges: [...]}")


def _written_edges(graph) -> bool:
    """Whether a spec lists its edges (as saved specs do): one saved before presets got temporal edges for
    several rounds may have none, and still loads, with a warning."""
    return isinstance(graph, dict) and "edges" in graph


def _relative_to(entry, source):
    """An agent entry whose relative `adapter` folder is read relative to the spec file, as a designer's is."""
    adapter = entry.get("adapter") if isinstance(entry, dict) else None
    if isinstance(adapter, str) and not isinstance(source, dict) and not Path(adapter).expanduser().is_absolute():
        return {**entry, "adapter": str(Path(source).parent / adapter)}
    return entry


def spec_seen_ids(source: str | Path | dict) -> list[str]:
    """The task ids a spec says its team was trained or chosen on (`seen_ids`; none when it says nothing)."""
    data = source if isinstance(source, dict) else _read(Path(source))
    seen = data.get("seen_ids", [])
    if not isinstance(seen, list) or not all(isinstance(i, str) for i in seen):
        raise SpecError(f"team spec {source}: 'seen_ids' must be a list of task id strings")
    return seen


def team_from_spec(team_class: type, source: str | Path | dict, designer_loader: Callable | None = None):
    """A `team_class` (`Team`) from a spec file or dict; `designer_loader(folder, team)` loads a named designer."""
    where = "team spec" if isinstance(source, dict) else f"team spec {source}"
    data = source if isinstance(source, dict) else _read(Path(source))
    unknown = set(data) - TOP_LEVEL_FIELDS
    if unknown:
        raise SpecError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(TOP_LEVEL_FIELDS)}")
    spec_seen_ids(data)
    entries = data.get("agents")
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{where}: 'agents' must be a non-empty list")
    model = data.get("model", DEFAULT_MODEL)
    try:
        agents = [Agent.from_dict(_relative_to(e, source), default_model=model) for e in entries]
        graph = _graph(data.get("graph"), [a.name for a in agents], data.get("rounds", 1))
        team = team_class(
            agents,
            graph,
            rounds=data.get("rounds", 1),
            decision=_relative_to(data.get("decision", DECISION_METHOD), source),
            token_budget=data.get("token_budget"),
            seed=data.get("seed"),
            reuse=data.get("reuse"),
            channels=data.get("channels"),
            repeat_rounds=_written_edges(data.get("graph")),
        )
        if data.get("designer"):
            folder = Path(data["designer"])
            if not folder.is_absolute() and not isinstance(source, dict):
                folder = Path(source).parent / folder
            if designer_loader is None:
                raise ValueError(
                    f"it names a designer ({folder}); load it with kvmesh.cli.specs.load_team, or pass "
                    "designer_loader=kvmesh.topology.load_designer"
                )
            team = designer_loader(folder, team).apply(team)
        return team
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SpecError(f"{where}: {error}") from error


def team_to_spec(team) -> dict:
    spec = {
        "rounds": team.rounds,
        "decision": team.decision.to_spec(),
        "agents": [a.to_dict() for a in team.agents],
        "graph": {"edges": [e.to_dict() for e in team.graph.edges()]},
    }
    if team.token_budget is not None:
        spec["token_budget"] = team.token_budget
    if team.seed is not None:
        spec["seed"] = team.seed
    settings = {name: found for name, channel in team.channels.items() if (found := settings_of(channel))}
    if settings:
        spec["channels"] = settings
    if team.designer is not None:
        path = getattr(team.designer, "path", None)
        if path is None:
            raise SpecError("this team's designer is not saved; call designer.save(folder) before saving the spec")
        spec["designer"] = str(Path(path).resolve())
    return spec


def save_spec(team, path: str | Path) -> None:
    path = Path(path)
    spec = team_to_spec(team)
    text = json.dumps(spec, indent=2) if path.suffix == ".json" else yaml.safe_dump(spec, sort_keys=False)
    path.write_text(text)
