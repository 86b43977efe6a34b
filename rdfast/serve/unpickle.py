"""Restricted unpickling for the Flow-GRPO protocol: plain data and numpy arrays, nothing that runs code.

A pickle names the callables it wants called (its "globals"); ``pickle.loads`` imports and calls any of them,
so a request body could run ``os.system``. ``restricted_loads`` resolves only numpy's own array, dtype and
scalar reconstruction, through wrappers that refuse every dtype but numeric and string ones (object dtype would
be a door back to arbitrary objects); dict, list, tuple, str, bytes, int, float, bool and None need no global
at all. Any other global raises ``UnsafePickleError`` while the body is read, before anything is called.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

#: dtype kinds an array may have: bool, signed and unsigned int, float, complex, bytes, unicode
SAFE_KINDS = frozenset("biufcSU")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list, or an array of a refused dtype."""


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` inside a pickle: only the reconstruct wrapper accepts it, and it
    cannot be called (a pickle calling ``ndarray(...)`` directly is refused)."""


_NDARRAY = _NdarrayType()


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in SAFE_KINDS or dtype.hasobject or dtype.fields is not None:
        raise UnsafePickleError(f"arrays of dtype {dtype} are refused (numeric and string dtypes only)")
    return dtype


def _dtype(spec, align=False, copy=False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"a dtype must be named by a string, got {type(spec).__name__}")
    return _check_dtype(np.dtype(spec, align, copy))


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise UnsafePickleError("only plain numpy arrays may be reconstructed")
    # numpy's own BUILD step then fills the array; its dtype comes from ``_dtype`` and is checked again there
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _frombuffer(buffer, dtype, shape, order):
    dtype = _check_dtype(dtype)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _scalar(dtype, data=None):
    dtype = _check_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _latin1(text, encoding="latin1"):
    # protocols 0-2 spell bytes as _codecs.encode(text, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("_codecs.encode is allowed for latin1 bytes only")
    return text.encode("latin1")


def _empty_bytes():
    return b""  # protocols 0-2 spell b"" as a call of bytes(); any argument (a size to allocate) is refused


_NUMPY = {"_reconstruct": _reconstruct, "scalar": _scalar, "_frombuffer": _frombuffer}
ALLOWED = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _dtype, ("_codecs", "encode"): _latin1,
           ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED.update({(_module, name): fn for name, fn in _NUMPY.items()})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise UnsafePickleError(f"the pickle refers to {module}.{name}, which is not allowed (plain data "
                                    "and numeric or string numpy arrays only)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed")


def _check_arrays(value) -> None:
    """Every array reached from ``value`` has a safe dtype (the BUILD step could have set another)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            _check_dtype(item.dtype)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def restricted_loads(data: bytes):
    """Unpickle ``data`` allowing plain data and numeric or string numpy arrays only.

    Args:
        data: a pickle (any protocol).
    Returns:
        The unpickled value.
    Raises:
        UnsafePickleError: a refused global or dtype; nothing it names was called.
        pickle.UnpicklingError, ValueError, TypeError, EOFError: the bytes are not a valid pickle.
    """
    value = _RestrictedUnpickler(io.BytesIO(data)).load()
    _check_arrays(value)
    return value
