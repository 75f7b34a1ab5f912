"""What updates weights or policies from team runs: the one utility (`reward.py`) and the REINFORCE loop that
trains any graph policy behind a small protocol (`reinforce.py`)."""

from kvmesh.training.reinforce import GraphPolicy, ReinforceConfig, reinforce, rollouts
from kvmesh.training.reward import utility

__all__ = ["GraphPolicy", "ReinforceConfig", "reinforce", "rollouts", "utility"]
