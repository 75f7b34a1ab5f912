"""A run's channel settings: checked against the channel its edges use, and read back from older run folders.

`EvalConfig.channels` (and `kvmesh run`'s) holds settings by channel name; `check_channel_settings` keeps what
differs from each channel's defaults and refuses settings of a channel the team does not use, naming the flags.
`channels_field` upgrades a run saved before `channels` existed, when its channel's settings lived under aliases.
"""

from __future__ import annotations

from dataclasses import fields

from kvmesh.config import ConfigError
from kvmesh.kvcomm.channel import check_channel, settings_class_of
from kvmesh.kvcomm.settings import lift_aliases, setting_key, settings_changes


def check_channel_settings(config) -> None:
    """Check that `channels` holds valid settings of the one channel the team's edges use (`channel`), and keep
    only what differs from that channel's defaults. Another channel's settings would mean nothing; a spec or
    designer sets its own channels (and `kvmesh.cli.flags.refuse_team_flags` refuses the flags beside them)."""
    owner = type(config).__name__
    chosen = {}
    for name, settings in config.channels.items():
        check_channel(name, f"{owner}.channels")
        settings_class = settings_class_of(name)
        known = {field.name for field in fields(settings_class)} if settings_class is not None else set()
        try:
            changes = settings_changes(name, settings)
        except (TypeError, ValueError) as error:
            given = [field for field in settings if field in known] if isinstance(settings, dict) else []
            known_keys = ", ".join(f"{{{setting_key(name, field)}}}" for field in given)
            raise ConfigError(f"{known_keys or '{channels}'}: {error}", owner) from error
        if changes and name != config.channel and not (config.spec or config.designer):
            keys = ", ".join(f"{{{setting_key(name, field)}}}" for field in changes)
            raise ConfigError(
                f"{keys}: {name}'s settings mean nothing on {config.channel} edges: use them with {{channel}} {name}",
                owner,
            )
        chosen[name] = changes
    # what was chosen, defaults left out, so that a run resumes whether a default was spelled out or not
    config.channels = {name: changes for name, changes in chosen.items() if changes}


def channels_field(saved: dict) -> dict:
    """A run saved before `channels` recorded its channel's settings under their aliases (`anchors`,
    `layer_fraction`): the same settings, in `channels` (what differs from the defaults of the channel its edges
    used). A spec's or designer's run recorded neither."""
    if "channels" in saved or "channel" not in saved:
        return saved
    upgraded, settings = lift_aliases(saved, saved["channel"])
    return upgraded | {"channels": {saved["channel"]: settings} if settings else {}}
