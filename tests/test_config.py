"""Config errors name their fields; Python shows field names, the CLI shows flags."""

import pytest

from kvmesh.cli.flags import show_config_error
from kvmesh.config import ConfigError
from kvmesh.evals.runner import EvalConfig


def test_a_config_error_names_fields_and_renders_them_as_asked():
    with pytest.raises(ConfigError) as info:
        EvalConfig("infoqa", limit=0)
    assert str(info.value) == "EvalConfig: limit must be at least 1, got 0"
    assert info.value.fields == ["limit"]
    assert show_config_error(info.value) == "--limit must be at least 1, got 0"
    with pytest.raises(ConfigError, match=r"topology must be one of .*got 'ring'"):
        EvalConfig("infoqa", topology="ring")
    with pytest.raises(ConfigError) as info:
        EvalConfig("infoqa", designer="d", spec="s")
    assert show_config_error(info.value).startswith("use either --designer or --spec")
