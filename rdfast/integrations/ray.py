"""Offline scoring on Ray Data: ``RewardScorer`` is a stateful callable for ``Dataset.map_batches`` (one reward model
per actor of an actor pool) that adds a score column to rows holding an image (a path, encoded bytes, a decoded
array or a ``{"bytes", "path"}`` dict) and a prompt, read from Parquet, JSONL or anything Ray Data reads.

    import ray
    from rdfast.integrations.ray import RewardScorer

    ds = ray.data.read_parquet("s3://bucket/samples/")                     # columns "image" (bytes), "prompt"
    scored = ds.map_batches(RewardScorer, fn_constructor_kwargs={"model": "/ckpts/rm"}, batch_format="pandas",
                            batch_size=64, compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1, num_cpus=1)
    scored.write_parquet("s3://bucket/scores/")

A bad row (a missing or corrupt image, an empty prompt, an item the model refuses) keeps its place with a null
score and its reason in the error column; the other rows of its batch are scored. Give the actors an explicit
``num_cpus`` (fractional is fine): Ray Serve replicas or other actors on the same cluster otherwise may hold the
CPUs the pool waits for.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import load_image, to_rgb
from ..model import RewardModel


def open_image(value, root: str | None, index: int, field: str) -> Image.Image:
    """One row's image as an RGB PIL image.

    Args:
        value: a file path (relative to ``root``), PNG/JPEG/... bytes, a uint8 array [H, W, 3] (as
            ``ray.data.read_images`` gives) or a ``{"bytes", "path"}`` dict (the Parquet form of a Hugging Face
            ``Image`` feature).
        root: the folder relative paths start from (None: the working directory).
        index, field: the row and column, named in errors.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return load_image(os.path.join(root, value) if root else value, index, field)
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as image:
                image.load()
        except Exception as err:  # PIL raises several types for corrupt files
            raise InputError(f"cannot decode the image bytes: {err}", index, field) from None
        return to_rgb(image, index, field)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[-1] in (1, 3, 4):
        return to_rgb(Image.fromarray(value[..., 0] if value.shape[-1] == 1 else value), index, field)
    raise InputError(f"expected an image path, image bytes or a uint8 array [H, W, 3], got {type(value).__name__}",
                     index, field)


class RewardScorer:
    """Scores batches of rows; construct it through ``map_batches(RewardScorer, fn_constructor_kwargs=...)``.

    Args:
        model: what ``RewardModel.from_pretrained`` takes (loaded once per actor).
        prompt_column: the column of prompts.
        image_column: the column of images (see ``open_image``); pointwise ``rm.score`` unless
            ``reference_column`` is given.
        reference_column: a column of reference images: pairwise ``rm.compare(images1=reference, images2=image)``.
        instruction, debias: as ``rm.score`` / ``rm.compare`` take them.
        root: the folder relative image paths start from.
        device, dtype: for ``from_pretrained`` (dtype a ``torch.dtype`` or its name, e.g. "bfloat16").
        score_column, error_column: the columns added (score float or null; error null or the reason).
    """

    def __init__(self, model, *, prompt_column: str = "prompt", image_column: str = "image",
                 reference_column: str | None = None, instruction: str | None = None, debias: bool = False,
                 root: str | None = None, device=None, dtype=None, score_column: str = "score",
                 error_column: str = "error"):
        import torch  # heavy: only to name the dtype

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.rm = model if isinstance(model, RewardModel) else RewardModel.from_pretrained(model, device=device,
                                                                                            dtype=dtype)
        self.prompt_column, self.image_column, self.reference_column = prompt_column, image_column, reference_column
        self.instruction, self.debias, self.root = instruction, debias, root
        self.score_column, self.error_column = score_column, error_column

    def __call__(self, batch):
        """Score one batch.

        Args:
            batch: a pandas DataFrame (``batch_format="pandas"``) or a dict of column arrays (the default format).
        Returns:
            The batch, same rows in the same order, with the score (float64, null for a bad row) and error (null,
            or why the row was not scored) columns added.
        """
        columns = batch if isinstance(batch, dict) else {name: batch[name].to_numpy() for name in batch.columns}
        for name in (self.prompt_column, self.image_column, self.reference_column):
            if name is not None and name not in columns:
                raise InputError(f"the batch has no column {name!r} (it has {', '.join(columns)})", field=name)
        scores, errors = self.score_rows(columns)
        if isinstance(batch, dict):
            return {**batch, self.score_column: np.array(scores, dtype=object), self.error_column:
                    np.array(errors, dtype=object)}
        import pandas as pd  # Ray Data's own dependency

        out = batch.copy()
        out[self.score_column] = pd.array(scores, dtype="Float64")  # nullable: a bad row is null, never NaN
        out[self.error_column] = pd.array(errors, dtype="string")
        return out

    def score_rows(self, columns: dict) -> tuple[list, list]:
        """(score or None, error or None) per row of ``columns``."""
        n = len(columns[self.prompt_column])
        scores, errors = [None] * n, [None] * n
        good, prompts, images, references = [], [], [], []
        for i in range(n):
            try:
                prompt = columns[self.prompt_column][i]
                if not isinstance(prompt, str) or not prompt.strip():
                    raise InputError(f"expected a non-empty string, got {prompt!r}", i, self.prompt_column)
                image = open_image(columns[self.image_column][i], self.root, i, self.image_column)
                if self.reference_column is not None:
                    references.append(open_image(columns[self.reference_column][i], self.root, i,
                                                 self.reference_column))
            except InputError as err:
                errors[i] = str(err)
                continue
            good.append(i)
            prompts.append(prompt)
            images.append(image)
        while good:  # an item only the model refuses is marked and the rest scored again
            try:
                values = self._score(images, references, prompts)
            except InputError as err:
                if err.index is None or not 0 <= err.index < len(good):
                    values = self._one_by_one(images, references, prompts)
                else:
                    errors[good[err.index]] = str(err)
                    for column in (good, prompts, images, references):
                        if column:
                            del column[err.index]
                    continue
            except FloatingPointError:  # a non-finite score: find its row
                values = self._one_by_one(images, references, prompts)
            for i, value in zip(good, values):
                if isinstance(value, Exception):
                    errors[i] = f"{type(value).__name__}: {value}"
                else:
                    scores[i] = value
            break
        return scores, errors

    def _one_by_one(self, images: list, references: list, prompts: list[str]) -> list:
        out = []
        for k in range(len(prompts)):
            try:
                out.append(self._score(images[k : k + 1], references[k : k + 1], prompts[k : k + 1])[0])
            except (InputError, FloatingPointError) as err:
                out.append(err)
        return out

    def _score(self, images: list, references: list, prompts: list[str]) -> list[float]:
        if self.reference_column is None:
            values = self.rm.score(images=images, prompts=prompts, instruction=self.instruction)
        else:
            values = self.rm.compare(images1=references, images2=images, prompts=prompts,
                                     instruction=self.instruction, debias=self.debias)
        return values.detach().float().cpu().tolist()
