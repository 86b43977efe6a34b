"""Triton kernels, installed as ``rdfast.kernels``. Importing this package does not import triton;
``rdfast.kernels.head`` does, and ``rdfast.ops`` imports it only when the Triton backend is used."""

if __name__ == "kernels":
    # Reached only from a checkout whose root is on sys.path (``python -m ...`` or pytest run there). The
    # top-level name ``kernels`` belongs to Hugging Face's hub-kernels package, which transformers >= 5.25
    # imports; load whatever ``kernels`` the rest of sys.path holds in this folder's place, or fail as if this
    # folder were absent.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root])
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns sys.modules' entry, so this replaces us
    _spec.loader.exec_module(_module)
