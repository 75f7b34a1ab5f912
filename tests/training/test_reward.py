"""The one utility: score less the cost, in the unit the user pays."""

import pytest

from kvmesh.agents.usage import Usage
from kvmesh.training.reward import COSTS, task_cost, utilities, utility


def test_utility_is_score_less_the_weighted_token_share():
    assert utility(1.0, 500, 0.5, 1000) == 0.75
    assert utilities([(1.0, 0), (0.0, 2000)], 0.5, 1000) == [1.0, -1.0]
    with pytest.raises(ValueError, match="normaliser must be positive"):
        utility(1.0, 10, 0.5, 0)


def test_a_task_costs_what_its_usage_says_in_the_unit_chosen():
    usage = Usage(input_tokens=300, output_tokens=40, calls=3, call_time_s=1.25, kv_bytes=4096)
    assert task_cost(usage) == task_cost(usage, "tokens") == 340
    assert task_cost(usage, "generated") == 40
    assert task_cost(usage, "time") == 1.25
    assert task_cost(usage, "kv-bytes") == 4096
    assert set(COSTS) == {"tokens", "generated", "time", "kv-bytes"}
    with pytest.raises(ValueError, match="cost must be one of tokens, generated, time, kv-bytes"):
        task_cost(usage, "dollars")
