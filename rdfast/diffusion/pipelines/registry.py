"""The pipeline class -> wrapper table, ``adapt`` and ``load_pipeline``."""
from __future__ import annotations

import os

import torch

from ..testing import tiny_pipeline
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


def load_pipeline(spec: str, device=None, dtype=None):
    """A diffusers pipeline from a local directory, or ``tiny:flux|sd3|sd|sdxl|wan`` for a tiny random one (no
    network)."""
    if spec.startswith("tiny:"):
        kind, _, size = spec[5:].partition(":")
        return tiny_pipeline(kind, size or "tiny", device=device or "cpu", dtype=dtype)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"pipeline {spec!r} is not a local directory (rdfast never downloads); "
                                "use tiny:flux, tiny:sd3, tiny:sd, tiny:sdxl or tiny:wan for a tiny random pipeline")
    from diffusers import DiffusionPipeline  # heavy

    pipe = DiffusionPipeline.from_pretrained(spec, dtype=dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
