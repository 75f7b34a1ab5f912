"""Fitting and training c2c's KV mappers (`kvmesh.kvcomm.c2c.mappers`) on local data.

fit.py        the data mappers learn from (train split; validation for quality), and the ridge fit
examples.py   training examples from the prompts a team reads, and the receiver's reply loss in each c2c mode
train.py      the gated fusers' loop: validation-chosen checkpoints, resumable
"""

from kvmesh.training.kv_mappers.fit import FitConfig, aligned_pairs, fit, probe_text, sender_context, tasks
from kvmesh.training.kv_mappers.train import TrainConfig, train

__all__ = ["FitConfig", "TrainConfig", "aligned_pairs", "fit", "probe_text", "sender_context", "tasks", "train"]
