"""Data: datasets by name, fairness datasets, client partitions, a device's own data, per-client tensors."""
