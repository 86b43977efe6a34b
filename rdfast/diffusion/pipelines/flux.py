"""FLUX (``FluxPipeline``): packed 2x2 latent patches, guidance-distilled (one evaluation per step)."""
from __future__ import annotations

import numpy as np
import torch

from .base import PipelineWrapper


class FluxWrapper(PipelineWrapper):
    family = "flux"
    default_guidance = 3.5

    def __init__(self, pipe, guidance_scale=None, negative_prompt="", max_sequence_length: int | None = None):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self.latent_multiple = self.vae_scale * 2  # FLUX packs 2x2 latent patches
        # None: FluxPipeline's 512, or less when the T5 tokenizer is shorter (the toy generator's 8 tokens)
        self.max_sequence_length = max_sequence_length or min(512, pipe.tokenizer_2.model_max_length)
        self._img_ids = {}

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.transformer

    def latent_shape(self, height: int, width: int) -> tuple:
        h, w = height // self.vae_scale, width // self.vae_scale
        c = self.model.config.in_channels // 4
        self._ids(h // 2, w // 2)
        return (h // 2 * (w // 2), c * 4)

    def _ids(self, h2, w2):
        key = h2 * w2
        if key not in self._img_ids:
            self._img_ids[key] = self.pipe._prepare_latent_image_ids(1, h2, w2, self.device, self.dtype)
        return self._img_ids[key]

    def _set_timesteps(self, sched, num_steps, height, width):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # heavy

        config = sched.config
        seq = (height // self.vae_scale // 2) * (width // self.vae_scale // 2)
        mu = calculate_shift(seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)  # as FluxPipeline.__call__

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple:
        prompts = self.check_prompts(prompts)
        pe, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                max_sequence_length=self.max_sequence_length)
        return pe.to(self.dtype), pooled.to(self.dtype)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        guidance = None
        if self.model.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance_scale, device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        return self.model(hidden_states=x, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                          encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=self._img_ids[x.shape[1]],
                          return_dict=False)[0]

    def predict(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """The unguided model output for positive cond (FLUX's distilled guidance is part of the model)."""
        return self.denoise(x, t, *cond)

    def _to_vae(self, latents, height, width):
        z = self.pipe._unpack_latents(latents, height, width, self.vae_scale)
        return super()._to_vae(z, height, width)

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = super().encode_images(images, generator)
        n, c, h, w = z.shape
        self._ids(h // 2, w // 2)
        return self.pipe._pack_latents(z, n, c, h, w)
