"""The sealed Channel contract: every hook is declared on `Channel` with a default, channels are subclasses that
override what they do, the runtime (agents, the eval runner) names no channel, and channel settings reach the
command line from each channel's settings class."""

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from kvmesh import Agent, CommGraph, Edge, Task, Team
from kvmesh.cli import make_parser
from kvmesh.cli.flags import config_from_args, given_options
from kvmesh.config import ConfigError
from kvmesh.evals.runner import EvalConfig
from kvmesh.kvcomm import channel as channel_module
from kvmesh.kvcomm.c2c import C2CChannel
from kvmesh.kvcomm.channel import (
    DEFAULT_CHANNEL,
    Channel,
    available_channels,
    make_channel,
    register_channel,
    settings_class_of,
)
from kvmesh.kvcomm.kv_reuse import KVReuseChannel
from kvmesh.kvcomm.kv_select import KVSelectChannel
from kvmesh.kvcomm.text import TextChannel

ROOT = Path(__file__).resolve().parents[2] / "kvmesh"
HOOKS = ("check", "prepare", "layout", "place", "kv_bytes", "keeps", "learn", "stats", "save", "calibrate")


class Bare(Channel):
    """A channel that overrides nothing: every hook at its default."""

    name = "bare"


def test_every_built_in_channel_is_a_channel_and_the_base_declares_every_hook():
    for hook in (*HOOKS, "wants_calibration", "begin_calibration", "settings_dict"):
        assert callable(getattr(Channel, hook)), hook
    for implementation in (TextChannel, KVReuseChannel, KVSelectChannel, C2CChannel):
        assert issubclass(implementation, Channel), implementation
    assert isinstance(make_channel("kv-reuse"), Channel) and make_channel("text").save() == []


def test_a_channel_with_every_hook_at_its_default_reads_as_text(tiny, monkeypatch):
    """Nothing the runtime asks of a channel is optional-by-probe: a bare subclass runs a team, and its replies
    are the text channel's word for word."""
    monkeypatch.setattr(channel_module, "_REGISTRY", channel_module._REGISTRY.copy())  # the session keeps its own
    register_channel("bare", Bare)
    agents = [Agent("a", model=tiny, max_new_tokens=6), Agent("b", model=tiny, max_new_tokens=6)]
    task = Task("What is 2 + 3?", id="t")

    def run(channel: str):
        graph = CommGraph(["a", "b"], [Edge("a", "b", channel=channel)])
        return Team(agents, graph, decision="last").run(task)

    bare, text = run("bare"), run("text")
    assert [m.content for m in bare.messages] == [m.content for m in text.messages]
    assert bare.messages[1].response_metadata["prompt"] == text.messages[1].response_metadata["prompt"]
    assert bare.usage.per_edge["a->b"].input_tokens == text.usage.per_edge["a->b"].input_tokens


def _string_constants(path: Path) -> set[str]:
    """String literals in a module's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


# Where a channel may be named in code: kvcomm (the channels), the studies that compare channels by name, and
# the c2c mapper trainer and its command (they train and fit one channel's mappers).
NAMED_BY = ("kvcomm/", "evals/studies/", "training/kv_mappers/", "cli/")


def test_the_runtime_names_no_channel():
    """Channel names live in kvcomm; the runtime asks the team's channel objects instead. Any string in code (not
    a docstring) that spells a channel name other than the default is a defect: an exact name, or one inside a
    message."""
    names = [name for name in available_channels()[:4] if name != DEFAULT_CHANNEL]
    spelled = re.compile("|".join(rf"(?<![\w-]){re.escape(name)}(?![\w-])" for name in names))
    named = {}
    for path in sorted(ROOT.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where.startswith(NAMED_BY):
            continue
        found = {text for text in _string_constants(path) if spelled.search(text)}
        if found:
            named[where] = found
    assert named == {}


def _eval_flags() -> set[str]:
    (commands,) = [a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {option for action in commands.choices["eval"]._actions for option in action.option_strings}


def test_channel_flags_come_from_each_settings_class():
    flags = _eval_flags()
    for name in available_channels()[:4]:
        settings_class = settings_class_of(name)
        if settings_class is None:
            continue
        for field in dataclasses.fields(settings_class):
            assert f"--{name}-{field.name.replace('_', '-')}" in flags
    assert {"--anchors", "--layer-fraction"} <= flags  # the older spellings still work


def test_channel_flags_land_in_the_configs_channels_field():
    parser = make_parser()
    argv = ["eval", "infoqa", "--channel", "kv-select", "--layer-fraction", "0.5", "--no-kv-select-keep-first"]
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv)
    config = config_from_args(EvalConfig, args)
    assert config.channels == {"kv-select": {"fraction": 0.5, "keep_first": False}}
    spelled = EvalConfig("infoqa", channel="kv-select", channels={"kv-select": {"fraction": 0.3}})
    assert spelled.channels == {}  # a default spelled out is no choice: the run resumes either way


def test_settings_for_another_channel_or_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="anchors: kv-reuse's settings mean nothing on text edges"):
        EvalConfig("infoqa", channels={"kv-reuse": {"anchors_dir": "x"}})
    with pytest.raises(ConfigError, match="unknown kv-select settings"):
        EvalConfig("infoqa", channel="kv-select", channels={"kv-select": {"fractoin": 0.5}})
