"""The error a bad user input raises: it names the item and the argument it came from."""
from __future__ import annotations


class InputError(ValueError):
    """A bad item in the user's input; ``index`` names it (and ``field`` the argument it came from)."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        where = f"{field}[{index}]" if field is not None and index is not None else (field or "")
        super().__init__(f"{where}: {message}" if where else message)
        self.index = index
        self.field = field
