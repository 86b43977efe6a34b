"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): a UNet, one CLIP text encoder, CFG."""
from __future__ import annotations

import torch

from .base import ClassifierFreeGuidanceWrapper


class SDWrapper(ClassifierFreeGuidanceWrapper):
    family = "sd"

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.unet

    def latent_shape(self, height: int, width: int) -> tuple:
        return (self.model.config.in_channels, height // self.vae_scale, width // self.vae_scale)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple:
        prompts = self.check_prompts(prompts)
        guided = self.do_classifier_free_guidance
        pe, npe = self.pipe.encode_prompt(prompts, self.device, 1, guided,
                                          negative_prompt=[self.negative_prompt] * len(prompts) if guided else None)
        out = (pe,) + ((npe,) if guided else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe):
        return self.model(x, t, encoder_hidden_states=pe, return_dict=False)[0]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return self._guided(self._run, x, t, cond[:1], cond[1:])

    n_positive = 1
