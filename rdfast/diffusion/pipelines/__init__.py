"""Adapters over diffusers pipelines: what ReFL and search need from FLUX, SD3, SD 1.5, SDXL and Wan 2.1 (video),
in one interface.

``adapt(pipe)`` returns a ``PipelineAdapter`` whose methods are pure tensor functions (no pipeline ``__call__``,
which runs under no_grad):

    cond = ad.encode(prompts)                  # tuple of tensors, batch first (negatives included under CFG)
    x = ad.noise(n, height, width, generator)  # starting latents in the denoiser's layout (FLUX: packed)
    schedule = ad.schedule(num_steps, height, width)
    out = ad.denoise(x, t, *cond)              # guided model output; ad.evals_per_step evaluations per sample
    images = ad.decode(x0, height, width)      # float32 [n, 3, H, W] in [0, 1], differentiable
                                               # (video adapters, ``ad.video``: [n, T, 3, H, W], T = ad.num_frames)

Guidance: FLUX-dev is guidance-distilled (``guidance_scale`` feeds its guidance embedding: one evaluation per
step); SD3, SD and SDXL use classifier-free guidance when ``guidance_scale > 1`` (two evaluations per step, batched
into one forward, negative prompt "" by default); so does Wan. Family code stays here; sampler.py never sees a
pipeline.

Video (``WanAdapter``): latents [n, C, F, h, w] with F = (num_frames - 1) / scale_factor_temporal + 1; the causal
video VAE decodes one latent frame at a time (the first to 1 frame, each later one to scale_factor_temporal
frames), and ``decode(..., checkpoint=True)`` puts one activation checkpoint around each of those per-frame
decodes, so backward holds one latent frame's decoder activations at a time.
"""
from .base import PipelineAdapter
from .flux import FluxAdapter
from .registry import ADAPTERS, adapt, load_pipeline
from .sd import SDAdapter
from .sd3 import SD3Adapter
from .sdxl import SDXLAdapter
from .wan import WanAdapter

__all__ = ["ADAPTERS", "FluxAdapter", "PipelineAdapter", "SD3Adapter", "SDAdapter", "SDXLAdapter", "WanAdapter",
           "adapt", "load_pipeline"]
