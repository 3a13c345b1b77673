"""The `erase` console script (and `python -m erase_cli`).

Signal handlers go in before anything heavy is imported: until a command installs its own
(erase_cli.interrupts.guard), nothing has been written, so a signal just ends the process with
128 + its number, the same code as later on, instead of a traceback from half-imported modules.
"""

import os
import signal
import sys

from erase_cli.errors import ExitStatus  # no dependencies: cheap this early


def _early(signum, _frame):
    sys.stderr.write(f"error: interrupted by {signal.Signals(signum).name}; nothing changed\n")
    os._exit(ExitStatus.signal(signum))


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _early)
    from erase_cli.cli import app

    app()


if __name__ == "__main__":
    main()
