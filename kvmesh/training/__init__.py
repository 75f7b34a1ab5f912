"""Optima-style training of agents for effectiveness and token efficiency (SFT and DPO with LoRA)."""
