"""`python -m flows.cli ...`: the `loom` command without its console script."""

import sys

from flows.cli import run

# the process's own program (python -m), not a module another program runs and then goes on after
run(fast_exit=getattr(sys.modules.get("__main__"), "__dict__", None) is globals())
