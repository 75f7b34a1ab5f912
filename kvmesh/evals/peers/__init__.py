"""Peer systems run beside kvmesh's own modes, on the same tasks and prompts (`kvmesh bench latent --peers`).

avp.py   AVP (PyPI `avp`): its latent hand-off, direct and text modes, and its cross-model projection
"""
