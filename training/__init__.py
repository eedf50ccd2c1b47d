"""Model, token-shard loader, DeepSpeed engine, Ray Train launcher, checkpoints (not built yet)."""
