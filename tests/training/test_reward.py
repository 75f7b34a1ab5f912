"""The one utility: score less the token cost."""

import pytest

from kvmesh.training.reward import utilities, utility


def test_utility_is_score_less_the_weighted_token_share():
    assert utility(1.0, 500, 0.5, 1000) == 0.75
    assert utilities([(1.0, 0), (0.0, 2000)], 0.5, 1000) == [1.0, -1.0]
    with pytest.raises(ValueError, match="normaliser must be positive"):
        utility(1.0, 10, 0.5, 0)
