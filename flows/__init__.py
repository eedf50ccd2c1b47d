"""Loom's Prefect flows, typed configs and the `loom` CLI. Composes tasks/ and training/; no stage logic."""
