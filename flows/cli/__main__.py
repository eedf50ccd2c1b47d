"""`python -m flows.cli ...`: the `loom` command without its console script."""

from flows.cli import app

app()
