"""The pipeline class -> wrapper table, ``adapt`` and ``load_pipeline``."""
from __future__ import annotations

import json
import os

import torch

from ...loading import check_weight_files
from ...resolve import resolve
from ..testing import tiny_pipeline, tiny_pipeline_dir
from .base import PipelineWrapper
from .flux import FluxWrapper
from .sd import SDWrapper
from .sd3 import SD3Wrapper
from .sdxl import SDXLWrapper
from .wan import WanWrapper

WRAPPERS = {"FluxPipeline": FluxWrapper, "StableDiffusion3Pipeline": SD3Wrapper,
            "StableDiffusionPipeline": SDWrapper, "StableDiffusionXLPipeline": SDXLWrapper,
            "WanPipeline": WanWrapper}


def adapt(pipe, guidance_scale: float | None = None, **kwargs) -> PipelineWrapper:
    """The wrapper for a diffusers pipeline (FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
    StableDiffusionXLPipeline, WanPipeline); a wrapper passes through unchanged. Clear error for other pipelines.

    kwargs go to the wrapper (``num_frames`` for video pipelines, ``max_sequence_length``, ``negative_prompt``);
    ``num_frames=None`` means the wrapper's default.
    """
    num_frames = kwargs.pop("num_frames", None)
    if isinstance(pipe, PipelineWrapper):
        if num_frames is not None and num_frames != getattr(pipe, "num_frames", None):
            raise ValueError(f"num_frames={num_frames!r} differs from the given {pipe.family} wrapper's "
                             f"{getattr(pipe, 'num_frames', None)!r} (image wrappers have none): pass it to adapt()")
        return pipe
    name = type(pipe).__name__
    if name not in WRAPPERS:
        raise ValueError(f"pipeline {name} is not supported; rdfast.diffusion supports {', '.join(WRAPPERS)}")
    cls = WRAPPERS[name]
    if num_frames is not None:
        if not cls.video:
            raise ValueError(f"num_frames is for video pipelines; {name} generates images")
        kwargs["num_frames"] = num_frames
    return cls(pipe, guidance_scale, **kwargs)


def tiny_pipeline_spec_dir(name: str):
    """The directory of ``tiny:GENERATOR[:SIZE]`` (the resolver's tiny form for pipelines)."""
    generator, _, size = name.partition(":")
    return tiny_pipeline_dir(generator, size or "tiny")


def resolve_pipeline(spec: str) -> str:
    """A local directory for a pipeline spec: a directory, ``tiny:flux|sd3|sd|sdxl|wan[:SIZE]``, ``toy:generator``
    (the trained toy-world generator shipped with rdfast) or a hub id."""
    return resolve(spec, tiny_pipeline_spec_dir, "pipeline")


def check_pipeline_weights(directory: str, allow_pickle: bool) -> None:
    """Refuse a pipeline any of whose components (the folders ``model_index.json`` lists) holds pickled weights
    only, unless ``allow_pickle`` (``rdfast.loading.check_weight_files``: InputError naming the file)."""
    with open(os.path.join(directory, "model_index.json")) as fh:
        components = [k for k in json.load(fh) if not k.startswith("_")]
    for name in components:
        folder = os.path.join(directory, name)
        if os.path.isdir(folder):
            check_weight_files(folder, allow_pickle, f"pipeline component {name!r} in")


def load_pipeline(spec: str, device=None, dtype=None, allow_pickle: bool = False):
    """A diffusers pipeline from a local directory, a hub id, ``toy:generator`` (the trained toy-world generator,
    rdfast.toyworld) or ``tiny:flux|sd3|sd|sdxl|wan[:SIZE]`` for a tiny random one (rdfast.resolve). ``tiny:flux:gpu`` is built in memory on ``device`` and never cached.

    Weights load from safetensors; a component whose weights are pickled only (``.bin``) is an InputError unless
    ``allow_pickle=True`` (``--allow-pickle``)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("tiny:") and spec.endswith(":gpu"):
        return tiny_pipeline(spec[5:].partition(":")[0], "gpu", device=device, dtype=dtype)
    from diffusers import DiffusionPipeline  # heavy

    directory = resolve_pipeline(spec)
    check_pipeline_weights(directory, allow_pickle)
    pipe = DiffusionPipeline.from_pretrained(directory, dtype=dtype or torch.float32, local_files_only=True,
                                             use_safetensors=None if allow_pickle else True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
