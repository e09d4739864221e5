"""Exit codes, one convention for every command (docs/DESIGN.md, "Exit codes"):

    0    done
    1    the work failed: training diverged, out of memory, a check failed, the disk filled up
    2    a usage error: a bad option, input, data or checkpoint (as argparse exits for a bad
         command line); one line "error: ..." on stderr, nothing half-written on disk
    130  interrupted (Ctrl-C), the state saved so far kept

`UsageError(message)` is the SystemExit a command raises for a usage error: its code is 2 and
its text the one "error: ..." line (which it prints when raised past main, as the interpreter
prints the text of a SystemExit whose code is a string, but with the code 2).
"""

from __future__ import annotations

import sys

DONE, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


class UsageError(SystemExit):
    """A usage error: exit status 2, text "error: <message>" (one line)."""

    def __init__(self, message: str):
        super().__init__(USAGE)
        self.message = f"error: {message}"

    def __str__(self) -> str:
        return self.message


def usage_error(message) -> UsageError:
    """Print the one error line to stderr and return the UsageError to raise."""
    e = UsageError(str(message))
    print(e.message, file=sys.stderr)
    return e
