"""c2c mappers: turn one model's position-free cache into another's.

base.py     KVMapper, MapperConfig, KV geometry, folders (mapper.json + mapper.safetensors), model checks
ridge.py    the training-free ridge mapper (`kvmesh c2c fit`)
fuser.py    the trained fuser: projection, per-token per-head weight, annealed per-layer gate (`kvmesh c2c train`)
quality.py  the held-out check: the receiver's attention outputs over mapped against real caches
"""
