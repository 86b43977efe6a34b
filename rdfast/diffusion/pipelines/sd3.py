"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): an MMDiT transformer, three text encoders, CFG."""
from __future__ import annotations

import torch

from .base import ClassifierFreeGuidanceWrapper


class SD3Wrapper(ClassifierFreeGuidanceWrapper):
    family = "sd3"

    def __init__(self, pipe, guidance_scale=None, negative_prompt="", max_sequence_length: int = 256):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self.latent_multiple = self.vae_scale * self.model.config.patch_size
        self.max_sequence_length = max_sequence_length

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.transformer

    def latent_shape(self, height: int, width: int) -> tuple:
        return (self.model.config.in_channels, height // self.vae_scale, width // self.vae_scale)

    def _set_timesteps(self, sched, num_steps, height, width):
        kwargs = {}
        if sched.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # heavy

            p = self.model.config.patch_size
            seq = (height // self.vae_scale // p) * (width // self.vae_scale // p)
            c = sched.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        sched.set_timesteps(num_steps, **kwargs)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple:
        prompts = self.check_prompts(prompts)
        guided = self.do_classifier_free_guidance
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=guided,
            negative_prompt=[self.negative_prompt] * len(prompts) if guided else None,
            max_sequence_length=self.max_sequence_length)
        out = (pe, pooled) + ((npe, npooled) if guided else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe, pooled):
        return self.model(hidden_states=x, timestep=t, encoder_hidden_states=pe, pooled_projections=pooled,
                          return_dict=False)[0]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return self._guided(self._run, x, t, cond[:2], cond[2:])

    n_positive = 2
