"""One module per corpus, each defining `DATASET = registry.Dataset(...)` (see experiments/data/registry.py)."""
