"""A folder of images as scoring items: its image files in file-name order, each with its prompt.

``rdfast score --images DIR`` scores the files of DIR (not its subfolders) whose suffix names an image
format; hidden files are left out and other files are named once. Prompts are one for all images
(``--prompt``) or one per image (``--prompts FILE``: one prompt per line, line k for the k-th image in
file-name order). Nothing is opened here: a file that cannot be read as an image is reported and skipped by
the scoring job, the other images are scored.
"""
from __future__ import annotations

import os

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_files(folder: str) -> tuple[list[str], list[str]]:
    """(image file names in sorted order, other file names) of ``folder``; raises InputError for a missing
    folder, a file, or a folder without image files."""
    if not os.path.isdir(folder):
        what = "is a file; give the folder of images" if os.path.exists(folder) else "no such folder"
        raise InputError(f"--images {folder}: {what}")
    files = sorted(f for f in os.listdir(folder) if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise InputError(f"--images {folder} holds no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    chosen = set(images)
    return images, [f for f in files if f not in chosen]


def read_prompts(path: str, count: int) -> list[str]:
    """``count`` prompts from a UTF-8 text file, one per line (a blank line, a missing file or another count
    is an InputError naming it)."""
    if not os.path.isfile(path):
        raise InputError(f"--prompts {path}: {'is a folder' if os.path.isdir(path) else 'no such file'}")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"--prompts {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InputError(f"--prompts {path}:{number}: a blank line (one prompt per image, in file-name order)")
    if len(lines) != count:
        raise InputError(f"--prompts {path} has {len(lines)} prompts for {count} image files: give one prompt "
                         "per image, in file-name order")
    return lines


def folder_records(folder: str, prompt: str | None = None, prompts_path: str | None = None) -> tuple[list[dict], list[str]]:
    """The items of an image folder as records {"image": file name, "prompt": text}, and the folder's files
    that are not images (for the job to name).

    Args:
        folder: the folder of images.
        prompt: one prompt for every image; or
        prompts_path: a text file with one prompt per image (module docstring).
    """
    if (prompt is None) == (prompts_path is None):
        raise InputError("--images needs --prompt TEXT or --prompts FILE (one of them)")
    if prompt is not None and not prompt.strip():
        raise InputError("--prompt must not be empty")
    images, others = image_files(folder)
    prompts = [prompt] * len(images) if prompt is not None else read_prompts(prompts_path, len(images))
    return [{"image": name, "prompt": text} for name, text in zip(images, prompts)], others
