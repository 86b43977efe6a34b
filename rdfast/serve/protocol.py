"""From request bodies to validated items: JSON fields, base64 or raw JPEG/PNG bytes, and the Flow-GRPO dict.

Everything here runs before an item reaches the batcher, so a bad item fails its own request only, with the
field and index named. Decoded images carry a hash of their pixels, so the batcher can hand the engine one
object per distinct image across requests (the encoder and the engine's feature cache key on the object).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import to_rgb
from ..prompts import ReservedText, instruction_text
from .unpickle import UnsafePickleError, restricted_loads


class TooLarge(InputError):
    """A body or an image over the server's size limits (HTTP 413)."""


class SchemaError(InputError):
    """A request field missing or of the wrong type (HTTP 422); bad values inside it are InputError (400)."""


def json_field(body: dict, name: str, kind: type | tuple, required: bool = True):
    """``body[name]`` checked to be of ``kind`` (None when absent and not required)."""
    if name not in body or body[name] is None:
        if required:
            raise SchemaError("required field missing", field=name)
        return None
    value = body[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SchemaError(f"expected {want}, got {type(value).__name__}", field=name)
    return value


@dataclass
class DecodedImage:
    """An RGB image and the hash of its size and pixels (equal pixels, equal key, whatever the encoding)."""

    image: Image.Image
    key: str


def decode_image(data: bytes, index: int, field: str, max_pixels: int) -> DecodedImage:
    """Decode PNG or JPEG bytes into an RGB image, refusing one over ``max_pixels`` before its pixels load.

    Args:
        data: the encoded file.
        index, field: where it came from, named in errors.
        max_pixels: the most pixels (width x height) an image may have.
    Returns:
        The decoded image and its pixel hash.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError("expected the non-empty bytes of a PNG or JPEG file", index, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise TooLarge(f"image is {image.width}x{image.height} = {image.width * image.height} pixels, "
                               f"more than the limit of {max_pixels}", index, field)
            image.load()
    except InputError:
        raise
    except Exception as err:  # PIL raises several types for corrupt or unknown files
        raise InputError(f"cannot decode the image (PNG or JPEG expected): {err}", index, field) from None
    image = to_rgb(image, index, field)
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.width}x{image.height}".encode())
    return DecodedImage(image, digest.hexdigest())


def decode_base64_image(text, index: int | None, field: str, max_pixels: int) -> DecodedImage:
    """One base64 string (optionally a ``data:image/...;base64,`` URL) -> a decoded image."""
    if not isinstance(text, str):
        raise SchemaError(f"expected a base64 string, got {type(text).__name__}", index, field)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(f"not valid base64: {err}", index, field) from None
    return decode_image(data, index, field, max_pixels)


def decode_base64_images(values, field: str, max_pixels: int) -> list[DecodedImage]:
    """A JSON list of base64 strings -> decoded images (errors name ``field`` and the index)."""
    if not isinstance(values, list):
        raise SchemaError(f"expected a list of base64 images, got {type(values).__name__}", field=field)
    return [decode_base64_image(text, i, field, max_pixels) for i, text in enumerate(values)]


def check_texts(reserved: ReservedText, prompts, instruction, n_items: int) -> list[str]:
    """Validate the prompts (and instruction) of one request as the encoder would, before batching.

    Args:
        reserved: the model's reserved strings (special tokens may not appear in user text).
        prompts: a list of strings (or a numpy array of strings), one per item.
        instruction: None or a string.
        n_items: how many images each column holds.
    Returns:
        The prompts as a list of str.
    """
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind not in "US":
            raise InputError(f"expected an array of strings, got dtype {prompts.dtype}", field="prompts")
        prompts = [p.decode() if isinstance(p, bytes) else str(p) for p in prompts.reshape(-1).tolist()]
    if not isinstance(prompts, (list, tuple)):
        raise SchemaError(f"expected a list of strings, got {type(prompts).__name__}", field="prompts")
    if len(prompts) != n_items:
        raise SchemaError(f"has {len(prompts)} items but the images have {n_items}", field="prompts")
    if not prompts:
        raise InputError("empty request", field="prompts")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise SchemaError(f"expected a string, got {type(prompt).__name__}", i, "prompts")
        if not prompt.strip():
            raise InputError(f"prompt must be a non-empty string, got {prompt!r}", i, "prompts")
        reserved.check(prompt, "prompts", i)
    check_instruction(reserved, instruction)
    return list(prompts)


def check_instruction(reserved: ReservedText, instruction) -> None:
    """Validate an instruction (None: the model's own) as the encoder would."""
    if instruction is not None:
        try:
            instruction_text(instruction)
        except ValueError as err:
            raise InputError(str(err), field="instruction") from None
        reserved.check(instruction, "instruction")


def parse_flow_grpo(body: bytes, max_pixels: int) -> tuple[list[DecodedImage], list]:
    """The Flow-GRPO reward-server request: a pickled dict with ``images`` (list of JPEG bytes) and ``prompts``
    (list of str or a numpy array of str); other keys (``metadata``, ``meta_datas``) are ignored.

    Returns:
        (decoded images, prompts as sent); the prompts are checked by ``check_texts``.
    """
    try:
        request = restricted_loads(body)
    except UnsafePickleError as err:
        raise InputError(f"refused: {err}", field="body") from None
    except Exception as err:  # not a pickle at all: any of several types
        raise InputError(f"not a valid pickle: {type(err).__name__}: {err}", field="body") from None
    if not isinstance(request, dict):
        raise InputError(f"expected a pickled dict, got {type(request).__name__}", field="body")
    images = request.get("images")
    if not isinstance(images, (list, tuple)):
        raise InputError("expected a list of JPEG bytes", field="images")
    if "prompts" not in request:
        raise InputError("missing (a list of strings, one per image)", field="prompts")
    return [decode_image(data, i, "images", max_pixels) for i, data in enumerate(images)], request["prompts"]
