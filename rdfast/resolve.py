"""One resolver from a model or pipeline spec to a local directory.

Forms, tried in this order:
- an existing local directory: used as it is;
- ``tiny:NAME``: a tiny random checkpoint built offline and cached (for tests, the demo and benchmarks);
- ``toy:NAME``: a model trained in the toy world (``rdfast.toyworld``), shipped as package data in
  ``rdfast/toyworld/models/NAME`` (e.g. ``toy:generator``);
- ``org/name`` (optionally ``org/name@revision``): a Hugging Face hub id, taken from the local hub cache,
  downloaded first unless ``HF_HUB_OFFLINE=1``; only weights in safetensors, configs, tokenizer and
  processor files are fetched.
A spec shaped as a path (``./x``, ``/x``, ``a/b/c``, or ``models/x`` while ``models`` is a local directory) that does
not exist is an error saying "no such local directory", never a hub lookup.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable

from .errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
#: files a reward model or pipeline needs; never pickled weights (.bin, .pt)
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
#: where ``toy:NAME`` models live (package data: a path, not an import of the side package)
TOY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toyworld", "models")


def toy_names() -> list[str]:
    """The ``toy:`` names shipped with this installation."""
    if not os.path.isdir(TOY_DIR):
        return []
    return sorted(n for n in os.listdir(TOY_DIR) if os.path.isdir(os.path.join(TOY_DIR, n)))


def resolve(spec: str | os.PathLike, tiny: Callable[[str], str | os.PathLike], what: str = "model", *,
            revision: str | None = None, cache_dir: str | os.PathLike | None = None,
            local_files_only: bool | None = None) -> str:
    """A local directory for ``spec`` (see the module docstring for the forms).

    Args:
        spec: a local directory, ``tiny:NAME``, ``toy:NAME`` or a hub id ``org/name[@revision]``.
        tiny: builds ``tiny:NAME`` and returns its directory (raises ValueError for an unknown NAME).
        what: what the spec names, for error messages ("reward model", "pipeline").
        revision: a hub revision (branch, tag or commit); not together with ``@revision`` in the spec.
        cache_dir: the hub cache to read and fill (default: huggingface_hub's, ``HF_HUB_CACHE``).
        local_files_only: True reads the hub cache only (as ``HF_HUB_OFFLINE=1`` does for every call).
    Returns:
        The absolute path of a local directory.
    Raises:
        InputError naming the spec when it matches no form; for a spec that is not an existing directory, the
        message says "no such local directory" and the hub's offline setting, whether or not the hub was asked.
    """
    text = os.fspath(spec)
    if os.path.isdir(text):
        return os.path.abspath(text)
    if text.startswith("tiny:"):
        try:
            return os.path.abspath(os.fspath(tiny(text[len("tiny:"):])))
        except ValueError as err:
            raise InputError(f"{what} {text!r}: {err}") from err
    if text.startswith("toy:"):
        name = text[len("toy:"):]
        if name not in toy_names():
            raise InputError(f"{what} {text!r}: no toy model {name!r}; this installation ships "
                             f"{', '.join('toy:' + n for n in toy_names()) or 'none'}")
        return os.path.join(TOY_DIR, name)
    # "models/nope" is a hub id by its shape, but when ./models exists it is a path the user mistyped
    parent = text.split("/", 1)[0]
    if HUB_ID.match(text) and not os.path.exists(text) and not os.path.isdir(parent):
        return _from_hub(text, what, revision, cache_dir, local_files_only)
    why = f"{parent!r} is a local directory, so it was not looked up on the hub" if os.path.isdir(parent) \
        else "not looked up on the hub"
    raise InputError(f"{what} {text!r}: no such local directory ({why}; {_offline_setting()}); give a local "
                     "directory, a tiny:NAME or toy:NAME spec or a hub id (org/name[@revision])")


def _offline_setting() -> str:
    from huggingface_hub import constants  # heavy

    return "HF_HUB_OFFLINE=1: hub downloads are off" if constants.HF_HUB_OFFLINE else \
        "HF_HUB_OFFLINE is not set: hub downloads are on"


def _from_hub(spec: str, what: str, revision: str | None, cache_dir, local_files_only: bool | None) -> str:
    from huggingface_hub import snapshot_download  # heavy
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, at, pinned = spec.partition("@")
    if at and revision is not None and revision != pinned:
        raise InputError(f"{what} {spec!r}: revision={revision!r} contradicts the spec's @{pinned}")
    try:
        return snapshot_download(repo_id, revision=pinned or revision, cache_dir=cache_dir,
                                 local_files_only=bool(local_files_only), allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as err:
        off = "local_files_only=True" if local_files_only else _offline_setting()
        raise InputError(f"{what} {spec!r}: no such local directory, and the hub id {repo_id!r} is not in the local "
                         f"hub cache ({off})") from err
    except HfHubHTTPError as err:
        raise InputError(f"{what} {spec!r}: no such local directory, and the hub refused the hub id {repo_id!r} "
                         f"({_offline_setting()}): {str(err).splitlines()[0]}") from err
