"""Wan 2.1 text-to-video (``WanPipeline``): video latents, a causal video VAE decoded frame by frame."""
from __future__ import annotations

import math
import warnings

import torch

from ..sampler import UnsupportedScheduler
from .base import ClassifierFreeGuidanceWrapper
from .vae import checkpointed


class WanWrapper(ClassifierFreeGuidanceWrapper):
    """Wan 2.1 text-to-video (``WanPipeline``: WanTransformer3DModel, AutoencoderKLWan, a UMT5 text encoder).

    Latents [n, C, F, h, w], F = (num_frames - 1) / scale_factor_temporal + 1. As ``pipe(...)``: prompts padded to
    512 tokens, classifier-free guidance 5.0 by default (both halves batched into one forward here). ``decode``
    gives videos [n, T, 3, H, W].
    Wan 2.1 ships ``UniPCMultistepScheduler`` (flow sigmas): a multistep solver, whose step depends on earlier
    outputs, so it can neither take one step with gradient on its own nor be rewound for search; rdfast samples
    the same flow schedule with Euler steps instead (``FlowMatchEulerDiscreteScheduler(shift=flow_shift)``, with a
    warning). Put that scheduler in the pipeline to make ``pipe(...)`` and rdfast sample identically.
    """

    family = "wan"
    video = True
    default_guidance = 5.0  # WanPipeline.__call__'s default
    n_positive = 1

    def __init__(self, pipe, guidance_scale=None, negative_prompt="", max_sequence_length: int = 512,
                 num_frames: int = 81):
        config = pipe.config
        if config.get("boundary_ratio") is not None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("Wan 2.2's two-expert pipeline (transformer_2 / boundary_ratio) is not supported; "
                             "rdfast.diffusion supports Wan 2.1 (one transformer)")
        if config.get("expand_timesteps"):
            raise ValueError("Wan 2.2 TI2V (expand_timesteps=True: per-token timesteps) is not supported; "
                             "rdfast.diffusion supports Wan 2.1")
        if getattr(pipe, "transformer", None) is None:
            raise ValueError("WanPipeline without a transformer")
        if pipe.vae.config.get("patch_size") is not None:
            raise ValueError("a Wan VAE with patch_size (Wan 2.2's) is not supported; rdfast.diffusion supports "
                             "Wan 2.1's AutoencoderKLWan")
        super().__init__(pipe, guidance_scale, negative_prompt)
        self.temporal_scale = int(self.vae.config.scale_factor_temporal)
        _, ph, pw = self.model.config.patch_size
        self.latent_multiple = self.vae_scale * math.lcm(ph, pw)
        self.max_sequence_length = max_sequence_length
        self.num_frames = self.check_frames(num_frames)
        self._n_causal_convs = sum(type(m).__name__ == "WanCausalConv3d" for m in self.vae.decoder.modules())
        self._warned = False

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.transformer

    # ---- frames ---------------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        """Latent frames F for ``num_frames`` video frames: (num_frames - 1) // scale_factor_temporal + 1."""
        return (num_frames - 1) // self.temporal_scale + 1

    def check_frames(self, num_frames: int) -> int:
        """A frame count the VAE produces exactly: 1 + k * scale_factor_temporal (Wan 2.1: 1, 5, 9, ..., 81)."""
        tf = self.temporal_scale
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(f"num_frames must be 1 + k * {tf} (k >= 0) for this Wan VAE (e.g. {1 + tf}, {1 + 4 * tf}, "
                             f"{1 + 20 * tf}), got {num_frames!r}")
        pt = self.model.config.patch_size[0]
        if self.latent_frames(num_frames) % pt:
            raise ValueError(f"num_frames={num_frames} gives {self.latent_frames(num_frames)} latent frames, not a "
                             f"multiple of the transformer's temporal patch {pt}")
        return num_frames

    def latent_shape(self, height: int, width: int) -> tuple:
        return (self.model.config.in_channels, self.latent_frames(self.num_frames), height // self.vae_scale,
                width // self.vae_scale)

    # ---- schedule --------------------------------------------------------------------------------------------
    def _fresh_scheduler(self):
        s = self.pipe.scheduler
        if type(s).__name__ == "UniPCMultistepScheduler" and s.config.get("use_flow_sigmas"):
            from diffusers import FlowMatchEulerDiscreteScheduler  # heavy

            if s.config.get("use_dynamic_shifting"):
                raise UnsupportedScheduler("UniPCMultistepScheduler with use_dynamic_shifting=True is not supported; "
                                           "use FlowMatchEulerDiscreteScheduler")
            if not self._warned:
                warnings.warn(f"Wan: sampling with Euler steps on UniPC's flow schedule (shift {s.config.flow_shift}): "
                              "UniPC is multistep and cannot be rewound or stepped with gradient alone. Set "
                              "pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=...) to match pipe(...) exactly",
                              stacklevel=3)
                self._warned = True
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=s.config.num_train_timesteps,
                                                   shift=s.config.flow_shift)
        return super()._fresh_scheduler()

    # ---- conditioning and the denoiser ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple:
        prompts = self.check_prompts(prompts)
        guided = self.do_classifier_free_guidance
        pe, npe = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=guided, device=self.device,
                                          negative_prompt=[self.negative_prompt] * len(prompts) if guided else None,
                                          max_sequence_length=self.max_sequence_length)
        out = (pe,) + ((npe,) if guided else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe):
        return self.model(hidden_states=x, timestep=t, encoder_hidden_states=pe, return_dict=False)[0]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return self._guided(self._run, x, t, cond[:1], cond[1:])

    # ---- decode / encode ----------------------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor):
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def _to_vae(self, latents, height, width):
        mean, inv_std = self._latent_stats(latents)
        return latents / inv_std + mean  # written as WanPipeline writes it (bit-equal decodes)

    def _from_vae(self, z):
        mean, inv_std = self._latent_stats(z)
        return (z - mean) * inv_std

    def _vae_decode(self, z, tile):
        self.vae.use_tiling = bool(tile)
        return self.vae.decode(z, return_dict=False)[0]

    def decode(self, x0: torch.Tensor, height: int, width: int, checkpoint: bool = False,
               tile: bool = False) -> torch.Tensor:
        """Clean latents [n, C, F, h, w] -> videos float32 [n, T, 3, H, W] in [0, 1] (differentiable).

        Args:
            x0: clean latents [n, C, F, h, w] (any float dtype).
            height, width: video size in pixels.
            checkpoint: recompute the decoder in backward (default False; only used when x0 requires grad).
            tile: diffusers' tiled decode (default False).

        checkpoint=True: one activation checkpoint per sample and latent frame (the VAE's own decoding unit: the
        first latent frame gives 1 frame, each later one ``scale_factor_temporal`` frames). Between frames only
        the causal convolutions' caches (the last two frames of each such convolution's input) are kept; backward
        recomputes one latent frame's decoder at a time, from the last to the first. tile=True: diffusers' tiled
        decode (spatial tiles), checkpointed per sample as a whole.
        """
        vae = self.vae
        if x0.dim() != 5:
            raise ValueError(f"latents: expected [n, C, F, h, w], got shape {tuple(x0.shape)}")
        z = self._to_vae(x0.to(vae.dtype), height, width)
        if checkpoint and torch.is_grad_enabled() and x0.requires_grad:
            if tile:
                video = torch.cat([checkpointed(self._vae_decode, z[i:i + 1], True) for i in range(z.shape[0])])
            else:
                self.vae.use_tiling = False
                video = torch.cat([self._decode_framewise(z[i:i + 1]) for i in range(z.shape[0])])
        else:
            video = self._vae_decode(z, tile)
        # [n, 3, T, H, W] in [-1, 1] -> [n, T, 3, H, W] in [0, 1], as WanPipeline's output_type="pt"
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).contiguous()

    def _decode_framewise(self, z: torch.Tensor) -> torch.Tensor:
        """AutoencoderKLWan._decode's loop (no tiling), one activation checkpoint per latent frame: [1, 3, T, H, W]."""
        vae = self.vae
        x = vae.post_quant_conv(z)  # a 1x1x1 convolution: frame-local, kept (latent-sized)
        layout, cache, frames = (None,) * self._n_causal_convs, [], []
        for i in range(x.shape[2]):
            out, layout, cache = checkpointed(_wan_frame, vae.decoder, x[:, :, i:i + 1], layout, i == 0, *cache)
            frames.append(out)
        return torch.cat(frames, 2).clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_images(self, videos: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Videos -> clean latents (for the pretraining loss), without gradient.

        Args:
            videos: float [n, T, 3, H, W] in [0, 1]; T a frame count ``check_frames`` accepts.
            generator: for sampling the VAE's latent distribution (None: torch's global one).

        Returns:
            latents [n, C, F, h, w] in ``dtype``.
        """
        if not torch.is_tensor(videos) or videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos: expected a float tensor [n, T, 3, H, W], got "
                             f"{tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__}")
        self.check_frames(int(videos.shape[1]))
        self.check_size(int(videos.shape[-2]), int(videos.shape[-1]))
        x = (videos * 2 - 1).permute(0, 2, 1, 3, 4).to(self.vae.device, self.vae.dtype)
        z = self.vae.encode(x).latent_dist.sample(generator)
        return self._from_vae(z).to(self.dtype)


def _wan_frame(decoder, x, layout, first, *cache):
    """One latent frame through Wan's decoder with its causal caches passed in as tensors (a pure function, so an
    activation checkpoint can recompute it). layout[k]: None (empty), "Rep" (diffusers' first-chunk marker) or an
    index into ``cache``. Returns (frames [1, 3, t, H, W], the new layout, the new caches)."""
    feat = [cache[k] if isinstance(k, int) else k for k in layout]
    out = decoder(x, feat_cache=feat, feat_idx=[0], first_chunk=first)
    new_layout, tensors = [], []
    for c in feat:
        if torch.is_tensor(c):
            new_layout.append(len(tensors))
            tensors.append(c)
        else:
            new_layout.append(c)
    return out, tuple(new_layout), tensors
