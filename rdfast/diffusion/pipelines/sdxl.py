"""SDXL (``StableDiffusionXLPipeline``): SD's UNet loop plus pooled text embeddings and size conditioning."""
from __future__ import annotations

import torch

from .base import ClassifierFreeGuidanceWrapper


class SDXLWrapper(ClassifierFreeGuidanceWrapper):
    """SDXL: SD's UNet loop plus pooled text embeddings and size/crop conditioning ("time ids")."""

    family = "sdxl"
    n_positive = 2

    def __init__(self, pipe, guidance_scale=None, negative_prompt=""):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self._time_ids = {}

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.unet

    def latent_shape(self, height: int, width: int) -> tuple:
        h, w = height // self.vae_scale, width // self.vae_scale
        self._register_size(h, w)
        return (self.model.config.in_channels, h, w)

    def _register_size(self, h, w):
        # original size = target size = the image size, crop (0, 0): SDXL's defaults. Built outside the denoiser
        # so a captured CUDA graph never copies from the host.
        if (h, w) not in self._time_ids:
            te2 = getattr(self.pipe, "text_encoder_2", None)
            ucfg = self.model.config
            proj = (te2.config.projection_dim if te2 is not None
                    else ucfg.projection_class_embeddings_input_dim - 6 * ucfg.addition_time_embed_dim)
            size = (h * self.vae_scale, w * self.vae_scale)
            ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=self.dtype, text_encoder_projection_dim=proj)
            self._time_ids[(h, w)] = ids.to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple:
        prompts = self.check_prompts(prompts)
        guided = self.do_classifier_free_guidance
        # negative None = "" with SDXL's force_zeros_for_empty_prompt honoured, as the pipeline's own default
        neg = None if self.negative_prompt == "" else [self.negative_prompt] * len(prompts)
        pe, npe, pooled, npooled = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                           do_classifier_free_guidance=guided, negative_prompt=neg)
        out = (pe, pooled) + ((npe, npooled) if guided else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe, pooled):
        ids = self._time_ids[tuple(x.shape[-2:])].expand(x.shape[0], -1)
        return self.model(x, t, encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
                          return_dict=False)[0]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return self._guided(self._run, x, t, cond[:2], cond[2:])

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = super().encode_images(images, generator)
        self._register_size(*z.shape[-2:])
        return z
