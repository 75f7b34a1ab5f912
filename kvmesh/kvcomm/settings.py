"""Channel settings outside a team: what a run records of them, the ones that name a folder a channel writes, their
names on the command line, and settings saved under aliases by older runs.

Each works from a channel's name (variants too) through its settings dataclass (`kvmesh.kvcomm.channel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields

from kvmesh.kvcomm.channel import available_channels, channel_settings, settings_class_of


def settings_changes(name: str, settings=None) -> dict:
    """The fields of channel `name`'s `settings` (see `channel_settings`) that differ from its defaults, as a
    JSON-ready dict: what a run records of the settings somebody chose."""
    chosen = channel_settings(name, settings)
    if chosen is None:
        return {}
    defaults = asdict(chosen.__class__())
    return {key: value for key, value in asdict(chosen).items() if value != defaults[key]}


def written_settings(channels: Mapping[str, object]) -> list[tuple[str, str]]:
    """(channel, field) of each setting in `channels` (settings by channel name) that names a place the channel
    writes (a settings field with `writes` in its metadata, e.g. kv-reuse's `anchors_dir`) and is set."""
    found = []
    for name, settings in channels.items():
        chosen = channel_settings(name, settings)
        for spec in fields(chosen) if chosen is not None else ():
            if spec.metadata.get("writes") and getattr(chosen, spec.name):
                found.append((name, spec.name))
    return found


def setting_key(channel: str, field: str) -> str:
    """The one name of channel `channel`'s settings field `field` outside its settings class: the field's alias
    when it has one, else `<channel>_<field>` (`kv_select_fraction`); on the command line it is the flag
    (`--kv-select-fraction`, `--anchors`)."""
    settings_class = settings_class_of(channel)
    spec = {f.name: f for f in fields(settings_class)}[field] if settings_class is not None else None
    if spec is not None and "alias" in spec.metadata:
        return spec.metadata["alias"]
    return channel.replace("-", "_") + "_" + field


def lift_aliases(record: Mapping[str, object], channel: str) -> tuple[dict, dict]:
    """A record that holds channel settings under their aliases at its top level (as configs did before their
    `channels` field: `anchors`, `layer_fraction`), split into the record without them and the settings of
    `channel` (the one its edges used) that differ from that channel's defaults."""
    aliases = {}
    for name in available_channels():
        settings_class = settings_class_of(name)
        for spec in fields(settings_class) if settings_class is not None else ():
            if "alias" in spec.metadata:
                aliases[spec.metadata["alias"]] = (name, spec.name)
    rest = {key: value for key, value in record.items() if key not in aliases}
    chosen = {field: record[alias] for alias, (name, field) in aliases.items() if name == channel and alias in record}
    return rest, settings_changes(channel, chosen) if chosen else {}
