"""Loom pipeline steps and on-disk formats. Plain functions over Arrow data; no Prefect here."""

__version__ = "0.1.0"
