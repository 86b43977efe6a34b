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
from __future__ import annotations

import functools
import math
import warnings

import torch

from .sampler import Schedule


def _checkpoint(fn, *args):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False)


#: decoder submodules checkpointed one by one when a decode is checkpointed
_FINE_TYPES = ("ResnetBlock2D", "Upsample2D", "Attention")


def _fine_forward(orig, decoder, *args, **kwargs):
    if decoder._rdfast_fine_checkpointing and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(orig, *args, use_reentrant=False, **kwargs)
    return orig(*args, **kwargs)


def _fine_checkpointing(decoder: torch.nn.Module, enabled: bool):
    """Switch per-submodule activation checkpointing in a VAE decoder on or off.

    The first call wraps the ``forward`` of each resnet, attention and upsampler (an instance attribute: the
    class, the weights and the state dict are untouched); the flag then decides at call time, so the
    checkpointed decode's backward recomputation sees the same setting as its forward. Diffusers' own
    per-block checkpointing is turned off: nesting both would recompute every block twice.
    """
    if not getattr(decoder, "_rdfast_fine_installed", False):
        for m in decoder.modules():
            if type(m).__name__ in _FINE_TYPES:
                m.forward = functools.partial(_fine_forward, m.forward, decoder)
        decoder._rdfast_fine_installed = True
    decoder._rdfast_fine_checkpointing = bool(enabled)
    if getattr(decoder, "gradient_checkpointing", False):
        decoder.gradient_checkpointing = False


class PipelineAdapter:
    """Common parts; subclasses implement encode/denoise and the latent layout of one family."""

    family = "?"
    latent_multiple = 8  # height and width must be multiples of this (pixels)
    video = False        # True: decode gives videos [n, T, 3, H, W] and the adapter has ``num_frames``

    def __init__(self, pipe, guidance_scale: float | None = None, negative_prompt: str = ""):
        self.pipe = pipe
        self.negative_prompt = negative_prompt
        self.guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        self.vae = pipe.vae
        cfg = self.vae.config
        # video VAEs (Wan) state their spatial factor; image VAEs halve once per block after the first
        self.vae_scale = cfg.get("scale_factor_spatial") or 2 ** (len(cfg.block_out_channels) - 1)
        self.vae.requires_grad_(False)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            enc = getattr(pipe, name, None)
            if enc is not None:
                enc.requires_grad_(False)

    default_guidance = 1.0

    # ---- properties -------------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The denoiser (transformer or UNet): the module ReFL trains."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def cfg(self) -> bool:
        return False

    @property
    def evals_per_step(self) -> int:
        return 2 if self.cfg else 1

    # ---- checks -------------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int):
        m = self.latent_multiple
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"{name} must be a positive multiple of {m} for this {self.family} pipeline, "
                                 f"got {v!r}")

    @staticmethod
    def check_prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            raise ValueError("prompts: expected a list of strings, got a single string")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts: empty list")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts[{i}]: must be a non-empty string, got {p!r}")
        return prompts

    # ---- schedule and noise -------------------------------------------------------------------------------
    def _fresh_scheduler(self):
        # A private copy: set_timesteps mutates the scheduler, and the user's pipeline should stay as it was.
        s = self.pipe.scheduler
        return type(s).from_config(s.config)

    def schedule(self, num_steps: int, height: int, width: int) -> Schedule:
        """The sampling schedule exactly as the pipeline's __call__ sets it for this size."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        self.check_size(height, width)
        sched = self._fresh_scheduler()
        self._set_timesteps(sched, num_steps, height, width)
        return Schedule.from_scheduler(sched)

    def _set_timesteps(self, sched, num_steps, height, width):
        sched.set_timesteps(num_steps)

    def latent_shape(self, height: int, width: int) -> tuple:
        raise NotImplementedError

    def noise(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal starting latents [n, ...] in the denoiser's layout and dtype (drawn on the CPU, so a
        seed gives the same noise on every device)."""
        self.check_size(height, width)
        x = torch.randn((n,) + self.latent_shape(height, width), generator=generator, dtype=torch.float32)
        return x.to(self.device, self.dtype)

    # ---- conditioning ---------------------------------------------------------------------------------------
    @staticmethod
    def take(cond: tuple, index) -> tuple:
        """Rows ``index`` ([B'] long, or an int repeat count for a single-prompt cond) of every cond tensor."""
        if isinstance(index, int):
            return tuple(c.expand(index, *c.shape[1:]).contiguous() for c in cond)
        return tuple(c.index_select(0, index.to(c.device)) for c in cond)

    # ---- decode / encode -----------------------------------------------------------------------------------
    def _to_vae(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return latents / cfg.scaling_factor + shift

    def _from_vae(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    def decode(self, x0: torch.Tensor, height: int, width: int, checkpoint: bool = False,
               tile: bool = False) -> torch.Tensor:
        """Clean latents [n, ...] -> images float32 [n, 3, H, W] in [0, 1] (differentiable).

        checkpoint=True keeps only the latents for backward and recomputes the decoder then, one sample at a
        time and one resnet / attention / upsampler at a time (finer than diffusers' per-block checkpointing,
        whose last block alone holds a dozen full-resolution activations): the decoder's activations never
        coexist with the denoiser's, nor with another sample's. tile=True decodes in overlapping tiles
        (diffusers' tiled decode).
        """
        vae = self.vae

        def run(z):
            vae.use_tiling = bool(tile)
            img = vae.decode(self._to_vae(z, height, width).to(vae.dtype), return_dict=False)[0]
            return (img.float() / 2 + 0.5).clamp(0, 1)

        decoder = getattr(vae, "decoder", None)
        if checkpoint and torch.is_grad_enabled() and x0.requires_grad:
            if decoder is not None:
                _fine_checkpointing(decoder, True)
            # one checkpoint per sample: backward recomputes (and frees) one sample's decoder at a time
            return torch.cat([_checkpoint(run, x0[i:i + 1]) for i in range(x0.shape[0])])
        if decoder is not None:
            _fine_checkpointing(decoder, False)
        return run(x0)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """Images float [n, 3, H, W] in [0, 1] -> clean latents in the denoiser's layout (for the pretraining loss)."""
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a float tensor [n, 3, H, W], got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        h, w = images.shape[-2:]
        self.check_size(int(h), int(w))
        z = self.vae.encode((images * 2 - 1).to(self.vae.device, self.vae.dtype)).latent_dist.sample(generator)
        return self._from_vae(z).to(self.dtype)

    def positive(self, cond: tuple) -> tuple:
        """The conditional (prompt) part of a cond tuple (all of it without classifier-free guidance)."""
        return cond

    def set_gradient_checkpointing(self, enabled: bool):
        """Activation checkpointing in the denoiser's blocks (diffusers' own, non-reentrant)."""
        if enabled:
            self.model.enable_gradient_checkpointing()
        else:
            self.model.disable_gradient_checkpointing()


class FluxAdapter(PipelineAdapter):
    family = "flux"
    default_guidance = 3.5

    def __init__(self, pipe, guidance_scale=None, negative_prompt="", max_sequence_length: int = 512):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self.latent_multiple = self.vae_scale * 2  # FLUX packs 2x2 latent patches
        self.max_sequence_length = max_sequence_length
        self._img_ids = {}

    @property
    def model(self):
        return self.pipe.transformer

    def latent_shape(self, height, width):
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
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = sched.config
        seq = (height // self.vae_scale // 2) * (width // self.vae_scale // 2)
        mu = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)  # as FluxPipeline.__call__

    @torch.no_grad()
    def encode(self, prompts) -> tuple:
        prompts = self.check_prompts(prompts)
        pe, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                max_sequence_length=self.max_sequence_length)
        return pe.to(self.dtype), pooled.to(self.dtype)

    def denoise(self, x, t, prompt_embeds, pooled):
        n = x.shape[0]
        guidance = None
        if self.model.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance_scale, device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        return self.model(hidden_states=x, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                          encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=self._img_ids[x.shape[1]],
                          return_dict=False)[0]

    def predict(self, x, t, *cond):
        """The unguided model output for positive cond (FLUX's distilled guidance is part of the model)."""
        return self.denoise(x, t, *cond)

    def _to_vae(self, latents, height, width):
        z = self.pipe._unpack_latents(latents, height, width, self.vae_scale)
        return super()._to_vae(z, height, width)

    def encode_images(self, images, generator=None):
        z = super().encode_images(images, generator)
        n, c, h, w = z.shape
        self._ids(h // 2, w // 2)
        return self.pipe._pack_latents(z, n, c, h, w)


class _CFGAdapter(PipelineAdapter):
    default_guidance = 7.0

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    n_positive = 1

    def positive(self, cond: tuple) -> tuple:
        """The conditional (prompt) part of a cond tuple, without the negatives."""
        return cond[: self.n_positive]

    def predict(self, x, t, *cond):
        """The unguided conditional model output (for the pretraining loss)."""
        return self._run(x, t, *cond)

    def _guided(self, run, x, t, cond_pos: tuple, cond_neg: tuple):
        if not self.cfg:
            return run(x, t, *cond_pos)
        # both halves in one forward, as the pipelines do: [uncond, cond]
        both = run(torch.cat([x, x]), torch.cat([t, t]), *(torch.cat([n, p]) for n, p in zip(cond_neg, cond_pos)))
        uncond, cond = both.chunk(2)
        from .sampler import guide

        return guide(cond, uncond, self.guidance_scale)


class SD3Adapter(_CFGAdapter):
    family = "sd3"

    def __init__(self, pipe, guidance_scale=None, negative_prompt="", max_sequence_length: int = 256):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self.latent_multiple = self.vae_scale * self.model.config.patch_size
        self.max_sequence_length = max_sequence_length

    @property
    def model(self):
        return self.pipe.transformer

    def latent_shape(self, height, width):
        return (self.model.config.in_channels, height // self.vae_scale, width // self.vae_scale)

    def _set_timesteps(self, sched, num_steps, height, width):
        kwargs = {}
        if sched.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            p = self.model.config.patch_size
            seq = (height // self.vae_scale // p) * (width // self.vae_scale // p)
            c = sched.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        sched.set_timesteps(num_steps, **kwargs)

    @torch.no_grad()
    def encode(self, prompts) -> tuple:
        prompts = self.check_prompts(prompts)
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=self.cfg,
            negative_prompt=[self.negative_prompt] * len(prompts) if self.cfg else None,
            max_sequence_length=self.max_sequence_length)
        out = (pe, pooled) + ((npe, npooled) if self.cfg else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe, pooled):
        return self.model(hidden_states=x, timestep=t, encoder_hidden_states=pe, pooled_projections=pooled,
                          return_dict=False)[0]

    def denoise(self, x, t, *cond):
        return self._guided(self._run, x, t, cond[:2], cond[2:])

    n_positive = 2


class SDAdapter(_CFGAdapter):
    family = "sd"

    @property
    def model(self):
        return self.pipe.unet

    def latent_shape(self, height, width):
        return (self.model.config.in_channels, height // self.vae_scale, width // self.vae_scale)

    @torch.no_grad()
    def encode(self, prompts) -> tuple:
        prompts = self.check_prompts(prompts)
        pe, npe = self.pipe.encode_prompt(prompts, self.device, 1, self.cfg,
                                          negative_prompt=[self.negative_prompt] * len(prompts) if self.cfg else None)
        out = (pe,) + ((npe,) if self.cfg else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe):
        return self.model(x, t, encoder_hidden_states=pe, return_dict=False)[0]

    def denoise(self, x, t, *cond):
        return self._guided(self._run, x, t, cond[:1], cond[1:])

    n_positive = 1


class SDXLAdapter(_CFGAdapter):
    """SDXL: SD's UNet loop plus pooled text embeddings and size/crop conditioning ("time ids")."""

    family = "sdxl"
    n_positive = 2

    def __init__(self, pipe, guidance_scale=None, negative_prompt=""):
        super().__init__(pipe, guidance_scale, negative_prompt)
        self._time_ids = {}

    @property
    def model(self):
        return self.pipe.unet

    def latent_shape(self, height, width):
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
    def encode(self, prompts) -> tuple:
        prompts = self.check_prompts(prompts)
        # negative None = "" with SDXL's force_zeros_for_empty_prompt honoured, as the pipeline's own default
        neg = None if self.negative_prompt == "" else [self.negative_prompt] * len(prompts)
        pe, npe, pooled, npooled = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                           do_classifier_free_guidance=self.cfg, negative_prompt=neg)
        out = (pe, pooled) + ((npe, npooled) if self.cfg else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe, pooled):
        ids = self._time_ids[tuple(x.shape[-2:])].expand(x.shape[0], -1)
        return self.model(x, t, encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
                          return_dict=False)[0]

    def denoise(self, x, t, *cond):
        return self._guided(self._run, x, t, cond[:2], cond[2:])

    def encode_images(self, images, generator=None):
        z = super().encode_images(images, generator)
        self._register_size(*z.shape[-2:])
        return z


class WanAdapter(_CFGAdapter):
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
        cfg = pipe.config
        if cfg.get("boundary_ratio") is not None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("Wan 2.2's two-expert pipeline (transformer_2 / boundary_ratio) is not supported; "
                             "rdfast.diffusion supports Wan 2.1 (one transformer)")
        if cfg.get("expand_timesteps"):
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
    def model(self):
        return self.pipe.transformer

    # ---- frames ---------------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_scale + 1

    def check_frames(self, num_frames) -> int:
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

    def latent_shape(self, height, width):
        return (self.model.config.in_channels, self.latent_frames(self.num_frames), height // self.vae_scale,
                width // self.vae_scale)

    # ---- schedule --------------------------------------------------------------------------------------------
    def _fresh_scheduler(self):
        s = self.pipe.scheduler
        if type(s).__name__ == "UniPCMultistepScheduler" and s.config.get("use_flow_sigmas"):
            from diffusers import FlowMatchEulerDiscreteScheduler

            from .sampler import UnsupportedScheduler

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
    def encode(self, prompts) -> tuple:
        prompts = self.check_prompts(prompts)
        pe, npe = self.pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=self.cfg, device=self.device,
                                          negative_prompt=[self.negative_prompt] * len(prompts) if self.cfg else None,
                                          max_sequence_length=self.max_sequence_length)
        out = (pe,) + ((npe,) if self.cfg else ())
        return tuple(c.to(self.dtype) for c in out)

    def _run(self, x, t, pe):
        return self.model(hidden_states=x, timestep=t, encoder_hidden_states=pe, return_dict=False)[0]

    def denoise(self, x, t, *cond):
        return self._guided(self._run, x, t, cond[:1], cond[1:])

    # ---- decode / encode ----------------------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor):
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).to(like.device, like.dtype)
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
                video = torch.cat([_checkpoint(self._vae_decode, z[i:i + 1], True) for i in range(z.shape[0])])
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
            out, layout, cache = _checkpoint(_wan_frame, vae.decoder, x[:, :, i:i + 1], layout, i == 0, *cache)
            frames.append(out)
        return torch.cat(frames, 2).clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_images(self, videos: torch.Tensor, generator=None) -> torch.Tensor:
        """Videos float [n, T, 3, H, W] in [0, 1] -> clean latents [n, C, F, h, w] (for the pretraining loss)."""
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


ADAPTERS = {"FluxPipeline": FluxAdapter, "StableDiffusion3Pipeline": SD3Adapter,
            "StableDiffusionPipeline": SDAdapter, "StableDiffusionXLPipeline": SDXLAdapter,
            "WanPipeline": WanAdapter}


def adapt(pipe, guidance_scale: float | None = None, **kwargs) -> PipelineAdapter:
    """The adapter for a diffusers pipeline (FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
    StableDiffusionXLPipeline, WanPipeline); an adapter passes through unchanged. Clear error for other pipelines.

    kwargs go to the adapter (``num_frames`` for video pipelines, ``max_sequence_length``, ``negative_prompt``);
    ``num_frames=None`` means the adapter's default.
    """
    num_frames = kwargs.pop("num_frames", None)
    if isinstance(pipe, PipelineAdapter):
        if num_frames is not None and num_frames != getattr(pipe, "num_frames", None):
            raise ValueError(f"num_frames={num_frames!r} differs from the given {pipe.family} adapter's "
                             f"{getattr(pipe, 'num_frames', None)!r} (image adapters have none): pass it to adapt()")
        return pipe
    name = type(pipe).__name__
    if name not in ADAPTERS:
        raise ValueError(f"pipeline {name} is not supported; rdfast.diffusion supports {', '.join(ADAPTERS)}")
    cls = ADAPTERS[name]
    if num_frames is not None:
        if not cls.video:
            raise ValueError(f"num_frames is for video pipelines; {name} generates images")
        kwargs["num_frames"] = num_frames
    return cls(pipe, guidance_scale, **kwargs)


def load_pipeline(spec: str, device=None, dtype=None):
    """A diffusers pipeline from a local directory, or ``tiny:flux|sd3|sd|sdxl|wan`` for a tiny random one (no
    network)."""
    import os

    if spec.startswith("tiny:"):
        from .testing import tiny_pipeline

        kind, _, size = spec[5:].partition(":")
        return tiny_pipeline(kind, size or "tiny", device=device or "cpu", dtype=dtype)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"pipeline {spec!r} is not a local directory (rdfast never downloads); "
                                "use tiny:flux, tiny:sd3, tiny:sd, tiny:sdxl or tiny:wan for a tiny random pipeline")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(spec, dtype=dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
