"""KV-cache communication between agents: cache toolkit and the kv-reuse, kv-select and c2c channels."""
