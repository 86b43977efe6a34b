"""The interface every generator family implements, and the classifier-free-guidance families' common part."""
from __future__ import annotations

import torch

from ..sampler import Schedule, guide
from .vae import checkpointed, set_fine_checkpointing


class PipelineWrapper:
    """Pure tensor functions over one diffusers pipeline; subclasses implement ``encode``, ``denoise``,
    ``predict`` and the latent layout (``model``, ``latent_shape``) of one family.

    Args:
        pipe: the diffusers pipeline (its VAE and text encoders are frozen here; the pipeline is not copied).
        guidance_scale: None: the family's ``default_guidance``; must be >= 0.
        negative_prompt: the negative prompt under classifier-free guidance (default "").
    """

    family = "?"
    latent_multiple = 8  # height and width must be multiples of this (pixels)
    video = False        # True: decode gives videos [n, T, 3, H, W] and the wrapper has ``num_frames``

    def __init__(self, pipe, guidance_scale: float | None = None, negative_prompt: str = ""):
        self.pipe = pipe
        self.negative_prompt = negative_prompt
        self.guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        self.vae = pipe.vae
        config = self.vae.config
        # video VAEs (Wan) state their spatial factor; image VAEs halve once per block after the first
        self.vae_scale = config.get("scale_factor_spatial") or 2 ** (len(config.block_out_channels) - 1)
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
        """The denoiser's device (latents and conditioning are made there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype (latents and conditioning are cast to it)."""
        return next(self.model.parameters()).dtype

    @property
    def do_classifier_free_guidance(self) -> bool:
        """True when each step evaluates a conditional and an unconditional (negative-prompt) branch."""
        return False

    @property
    def evals_per_step(self) -> int:
        """Denoiser evaluations per sample and step: 2 under classifier-free guidance, else 1 (for NFE)."""
        return 2 if self.do_classifier_free_guidance else 1

    # ---- checks -------------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError unless height and width (pixels) are positive multiples of ``latent_multiple``."""
        m = self.latent_multiple
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"{name} must be a positive multiple of {m} for this {self.family} pipeline, "
                                 f"got {v!r}")

    @staticmethod
    def check_prompts(prompts) -> list[str]:
        """The prompts as a list of non-empty strings; ValueError (naming the bad one) otherwise."""
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
        """The sampling schedule exactly as the pipeline's ``__call__`` sets it for this size.

        Args:
            num_steps: sampling steps T >= 1.
            height, width: image size in pixels (multiples of ``latent_multiple``; FLUX's shift depends on them).

        Returns:
            a ``Schedule`` read from a private copy of the pipeline's scheduler (the pipeline is left as it was).
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        self.check_size(height, width)
        sched = self._fresh_scheduler()
        self._set_timesteps(sched, num_steps, height, width)
        return Schedule.from_scheduler(sched)

    def _set_timesteps(self, sched, num_steps, height, width):
        sched.set_timesteps(num_steps)

    def latent_shape(self, height: int, width: int) -> tuple:
        """The shape of one sample's latents (no batch axis) in the denoiser's layout for this image size."""
        raise NotImplementedError

    def noise(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal starting latents.

        Args:
            n: number of samples.
            height, width: image size in pixels.
            generator: a CPU ``torch.Generator`` (None: torch's global one). Noise is drawn on the CPU in float32,
                so a seed gives the same noise on every device.

        Returns:
            latents [n, *latent_shape(height, width)] on ``device`` in ``dtype``.
        """
        self.check_size(height, width)
        x = torch.randn((n,) + self.latent_shape(height, width), generator=generator, dtype=torch.float32)
        return x.to(self.device, self.dtype)

    # ---- conditioning and the denoiser ------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> tuple:
        """Prompt conditioning, without gradient.

        Args:
            prompts: B non-empty strings.

        Returns:
            a tuple of tensors with batch B first, in ``dtype`` on ``device``: the family's prompt embeddings,
            followed by the negative prompt's under classifier-free guidance.
        """
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """The guided model output (``evals_per_step`` evaluations per sample, batched into one forward).

        Args:
            x: noisy latents [B, ...] in the denoiser's layout and ``dtype``.
            t: model timesteps [B], x's dtype.
            *cond: ``encode``'s tuple for the same B samples.

        Returns:
            the model output (velocity, noise or sample, per the scheduler), x's shape and dtype.
        """
        raise NotImplementedError

    @staticmethod
    def take(cond: tuple, index: torch.Tensor | int) -> tuple:
        """Select or repeat rows of every conditioning tensor.

        Args:
            cond: tensors with the batch first, as ``encode`` returns them.
            index: long [B'] rows to take, or an int repeat count for a single-prompt cond.

        Returns:
            the tensors with batch B' (contiguous copies when repeated).
        """
        if isinstance(index, int):
            return tuple(c.expand(index, *c.shape[1:]).contiguous() for c in cond)
        return tuple(c.index_select(0, index.to(c.device)) for c in cond)

    # ---- decode / encode -----------------------------------------------------------------------------------
    def _to_vae(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return latents / config.scaling_factor + shift

    def _from_vae(self, z: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (z - shift) * config.scaling_factor

    def decode(self, x0: torch.Tensor, height: int, width: int, checkpoint: bool = False,
               tile: bool = False) -> torch.Tensor:
        """Clean latents [n, ...] -> images float32 [n, 3, H, W] in [0, 1] (differentiable).

        Args:
            x0: clean latents [n, ...] in the denoiser's layout (any float dtype).
            height, width: image size in pixels.
            checkpoint: recompute the decoder in backward (default False; only used when x0 requires grad).
            tile: diffusers' tiled decode (default False).

        Returns:
            images float32 [n, 3, H, W] in [0, 1].

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
                set_fine_checkpointing(decoder, True)
            # one checkpoint per sample: backward recomputes (and frees) one sample's decoder at a time
            return torch.cat([checkpointed(run, x0[i:i + 1]) for i in range(x0.shape[0])])
        if decoder is not None:
            set_fine_checkpointing(decoder, False)
        return run(x0)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images -> clean latents (for the pretraining loss), without gradient.

        Args:
            images: float [n, 3, H, W] in [0, 1]; H and W multiples of ``latent_multiple``.
            generator: for sampling the VAE's latent distribution (None: torch's global one).

        Returns:
            latents [n, ...] in the denoiser's layout and ``dtype``.
        """
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a float tensor [n, 3, H, W], got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        h, w = images.shape[-2:]
        self.check_size(int(h), int(w))
        z = self.vae.encode((images * 2 - 1).to(self.vae.device, self.vae.dtype)).latent_dist.sample(generator)
        return self._from_vae(z).to(self.dtype)

    def positive(self, cond: tuple) -> tuple:
        """The conditional (prompt) part of a cond tuple from ``encode`` (all of it here: no negatives)."""
        return cond

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Switch activation checkpointing in the denoiser's blocks (diffusers' own, non-reentrant) on or off."""
        if enabled:
            self.model.enable_gradient_checkpointing()
        else:
            self.model.disable_gradient_checkpointing()


class ClassifierFreeGuidanceWrapper(PipelineWrapper):
    """Families guided by classifier-free guidance (SD3, SD, SDXL, Wan): on when ``guidance_scale > 1``; both
    branches run in one batched forward, as the pipelines run them."""

    default_guidance = 7.0

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    n_positive = 1

    def positive(self, cond: tuple) -> tuple:
        """The conditional (prompt) part of a cond tuple, without the negatives."""
        return cond[: self.n_positive]

    def predict(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """The unguided conditional model output (for the pretraining loss).

        Args:
            x: noisy latents [B, ...] in the denoiser's layout and ``dtype``.
            t: model timesteps [B], x's dtype.
            *cond: the positive part of ``encode``'s tuple (``positive(cond)``), batch B.

        Returns:
            the model output, x's shape and dtype.
        """
        return self._run(x, t, *cond)

    def _guided(self, run, x, t, cond_pos: tuple, cond_neg: tuple):
        if not self.do_classifier_free_guidance:
            return run(x, t, *cond_pos)
        # both halves in one forward, as the pipelines do: [uncond, cond]
        both = run(torch.cat([x, x]), torch.cat([t, t]), *(torch.cat([n, p]) for n, p in zip(cond_neg, cond_pos)))
        uncond, cond = both.chunk(2)
        return guide(cond, uncond, self.guidance_scale)
