"""One resolver from a model or pipeline spec to a local directory.

Forms, tried in this order:
- an existing local directory: used as it is;
- ``tiny:NAME``: a tiny random checkpoint built offline and cached (for tests, the demo and benchmarks);
- ``toy:NAME``: a model trained in the toy world (``rdfast.toyworld``), shipped as package data in
  ``rdfast/toyworld/models/NAME`` (e.g. ``toy:generator``);
- ``org/name`` (optionally ``org/name@revision``): a Hugging Face hub id, taken from the local hub cache,
  downloaded first unless ``HF_HUB_OFFLINE=1``; only weights in safetensors, configs, tokenizer and
  processor files are fetched.
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


def resolve(spec: str | os.PathLike, tiny: Callable[[str], str | os.PathLike], what: str = "model") -> str:
    """A local directory for ``spec`` (see the module docstring for the forms).

    Args:
        spec: a local directory, ``tiny:NAME``, ``toy:NAME`` or a hub id ``org/name[@revision]``.
        tiny: builds ``tiny:NAME`` and returns its directory (raises ValueError for an unknown NAME).
        what: what the spec names, for error messages ("reward model", "pipeline").
    Returns:
        The absolute path of a local directory.
    Raises:
        InputError naming the spec and the accepted forms when it matches none of them.
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
    if HUB_ID.match(text) and not os.path.exists(text):
        return _from_hub(text, what)
    raise InputError(
        f"{what} {text!r} is not a local directory, a tiny:NAME spec, a toy:NAME spec or a hub id "
        "(org/name[@revision])"
    )


def _from_hub(spec: str, what: str) -> str:
    from huggingface_hub import snapshot_download  # heavy
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        return snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as err:
        raise InputError(f"{what} {spec!r} is not in the local hub cache and downloads are off "
                         f"(HF_HUB_OFFLINE=1)") from err
