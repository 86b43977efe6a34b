"""The error a bad user input raises: it names the item and the argument it came from."""
from __future__ import annotations

import sys


class InputError(ValueError):
    """A bad item in the user's input; ``index`` names it (and ``field`` the argument it came from)."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        where = f"{field}[{index}]" if field is not None and index is not None else (field or "")
        super().__init__(f"{where}: {message}" if where else message)
        self.index = index
        self.field = field


def run_command(func, args, command: str):
    """Run a CLI command: a user error (bad input, missing file) is one line on stderr and exit code 2, never a
    traceback; anything else is a bug and propagates."""
    try:
        return func(args)
    except (InputError, FileNotFoundError) as err:
        print(f"rdfast {command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
