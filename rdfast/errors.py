"""The error a bad user input raises (it names the item and the argument it came from), and how every CLI
command reports it: one line on stderr and exit code 2, never a traceback (``--debug`` shows it)."""
from __future__ import annotations

import sys

#: what a user can get wrong without any bug in rdfast: bad input, a missing or unusable file or folder
USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


class InputError(ValueError):
    """A bad item in the user's input; ``index`` names it (and ``field`` the argument it came from)."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        where = f"{field}[{index}]" if field is not None and index is not None else (field or "")
        super().__init__(f"{where}: {message}" if where else message)
        self.index = index
        self.field = field


def run_command(func, args, command: str):
    """Run a CLI command: a user error (``InputError`` or a missing, unreadable or misplaced file) is one line
    on stderr and exit code 2, never a traceback; anything else is a bug and propagates. With
    ``args.debug`` set (the top-level ``--debug`` flag) every error propagates with its traceback."""
    if getattr(args, "debug", False):
        return func(args)
    try:
        return func(args)
    except (InputError, *USER_ERRORS) as err:
        print(f"rdfast {command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def check_device(spec: str | None, flag: str = "--device") -> None:
    """Raise InputError unless ``spec`` (None: automatic) names a device this machine has.

    Args:
        spec: "cpu", "cuda", "cuda:1", "mps", ... or None.
        flag: the CLI flag it came from, for the message.
    """
    if spec is None:
        return
    import torch  # heavy: only when a device is given

    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise InputError(f"{flag} {spec!r} is not a device ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {spec}: CUDA is not available on this machine (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{flag} {spec}: MPS is not available on this machine (try --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{flag} {spec}: rdfast runs on cpu, cuda or mps")

