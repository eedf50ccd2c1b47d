"""Model, token-shard loader, DeepSpeed worker loop, Ray Train launcher, checkpoints."""
