"""Wrappers over diffusers pipelines: what ReFL and search need from FLUX, SD3, SD 1.5, SDXL and Wan 2.1 (video),
in one interface.

``adapt(pipe)`` returns a ``PipelineWrapper`` whose methods are pure tensor functions (no pipeline ``__call__``,
which runs under no_grad):

    cond = wrapper.encode(prompts)                  # tuple of tensors, batch first (negatives included under CFG)
    x = wrapper.noise(n, height, width, generator)  # starting latents in the denoiser's layout (FLUX: packed)
    schedule = wrapper.schedule(num_steps, height, width)
    out = wrapper.denoise(x, t, *cond)              # guided model output; wrapper.evals_per_step per sample
    images = wrapper.decode(x0, height, width)      # float32 [n, 3, H, W] in [0, 1], differentiable
    # video wrappers (wrapper.video): decode gives [n, T, 3, H, W], T = wrapper.num_frames

Guidance: FLUX-dev is guidance-distilled (``guidance_scale`` feeds its guidance embedding: one evaluation per
step); SD3, SD and SDXL use classifier-free guidance when ``guidance_scale > 1`` (two evaluations per step, batched
into one forward, negative prompt "" by default); so does Wan. Family code stays in this package; sampler.py never
sees a pipeline.

Video (``WanWrapper``): latents [n, C, F, h, w] with F = (num_frames - 1) / scale_factor_temporal + 1; the causal
video VAE decodes one latent frame at a time (the first to 1 frame, each later one to scale_factor_temporal
frames), and ``decode(..., checkpoint=True)`` puts one activation checkpoint around each of those per-frame
decodes, so backward holds one latent frame's decoder activations at a time.

The private diffusers APIs this package relies on (underscore methods, VAE internals, patched methods) are listed
in ``rdfast.private_apis``, which tests check against the installed diffusers.

| module      | job |
|---|---|
| base.py     | ``PipelineWrapper`` (the shared interface) and ``ClassifierFreeGuidanceWrapper`` |
| flux.py     | ``FluxWrapper``: FLUX (packed latents, distilled guidance) |
| sd3.py      | ``SD3Wrapper``: Stable Diffusion 3 |
| sd.py       | ``SDWrapper``: Stable Diffusion 1.x / 2.x |
| sdxl.py     | ``SDXLWrapper``: SDXL (pooled embeddings, size conditioning) |
| wan.py      | ``WanWrapper``: Wan 2.1 text-to-video, frame-wise checkpointed decode |
| vae.py      | per-submodule activation checkpointing patched into VAE decoders |
| registry.py | ``WRAPPERS`` (pipeline class name -> wrapper), ``adapt``, ``load_pipeline`` |
"""
from .base import PipelineWrapper
from .flux import FluxWrapper
from .registry import WRAPPERS, adapt, load_pipeline
from .sd import SDWrapper
from .sd3 import SD3Wrapper
from .sdxl import SDXLWrapper
from .wan import WanWrapper

__all__ = ["WRAPPERS", "FluxWrapper", "PipelineWrapper", "SD3Wrapper", "SDWrapper", "SDXLWrapper", "WanWrapper",
           "adapt", "load_pipeline"]
