"""ReFL: reward feedback learning on a diffusers pipeline, with a pairwise Best-of-N reference reward.

One ReFL loss (``ReFLTrainer.loss``), per batch of prompts:
  1. sample without gradient from pure noise down to a random step j drawn in ``late_range`` (late steps);
  2. take the last ``grad_steps`` (K >= 1) steps j-K+1..j with gradient;
  3. predict x0 at step j, decode it with the VAE, score it: reward = P(candidate better than reference),
     averaged over the prompt's top-k Best-of-N references (PairwiseReward), or any reward callable;
  4. loss = relu(margin - r) ("relu") or -r ("neg"), plus ``pretrain_weight`` x the denoising loss on real
     latents when given. Gradients reach the denoiser only (LoRA through peft, or all weights).

Memory (``memory_efficient=True``, the default): activation checkpointing in the denoiser's blocks; the VAE
decode checkpointed (only latents kept; recomputed in backward one sample and one resnet at a time; video:
one sample and one latent frame at a time, keeping the causal convolutions' two-frame caches between frames); the
frozen reward model's layers recomputed in backward, no weight gradients. Options: tiled VAE decode, bf16
autocast, the reward model on another device. ``bench/refl_memory.py`` measures the peak memory and the step
time against the naive path (its figures are in bench/results and the README); tests hold the gradients of both
paths equal (cosine >= 0.9999 in float32).

    trainer = ReFLTrainer(pipe, PairwiseReward(rm, n=16, top_k=2), height=512, width=512, lora_rank=16)
    for prompts in loader:                 # the trainer's own step ...
        info = trainer.step(prompts)
    loss, info = trainer.loss(prompts)     # ... or your loop: loss.backward(); your optimizer.step()
    # ema_decay=0.99: an EMA of the trained weights, updated by step(); `with trainer.ema.swapped(): trainer.save(p)`

Video (Wan 2.1): the same trainer; the wrapper's decode gives videos [N, T, 3, H, W], decoded with one activation
checkpoint per latent frame, and the reward judges them as videos ("t2v" unless told otherwise):

    trainer = ReFLTrainer(wan_pipe, PairwiseReward(rm, n=4, top_k=1), height=480, width=832, num_frames=33)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass

import torch

from .ema import EMA, check_decay
from .pipelines import adapt
from .reward import PairwiseReward
from .sampler import Sampler, combine, training_target

LOSSES = ("relu", "neg")
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class ReFLConfig:
    """Settings of one ReFL run (all plain data; ``ReFLTrainer(**overrides)`` sets them by name)."""

    height: int = 512
    width: int = 512
    num_steps: int = 20                    # sampling steps T
    grad_steps: int = 1                    # K: the last K steps before x0 prediction carry gradient
    late_range: tuple = (0.7, 1.0)         # where the last gradient step j falls, as fractions of T
    guidance_scale: float | None = None    # None: the family default (FLUX 3.5 distilled, SD/SD3 7.0 CFG)
    loss: str = "relu"                     # "relu": relu(margin - r); "neg": -r
    margin: float = 1.0                    # c of relu(c - r); rewards are probabilities, so 1.0 never saturates
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lora_rank: int | None = 16             # None: full finetuning of the denoiser
    lora_alpha: float | None = None        # None: equal to the rank
    lora_targets: tuple = DEFAULT_LORA_TARGETS
    memory_efficient: bool = True          # checkpoint denoiser blocks, VAE decode and the reward model
    tile_vae: bool = False
    autocast: str | None = None            # "bf16": bfloat16 autocast for the denoiser and the VAE
    pretrain_weight: float = 0.0           # weight of the pretraining (denoising) loss when a batch is given
    graphs: bool = True                    # CUDA graphs for the no-grad sampling steps (CUDA only)
    seed: int = 0
    reference_batch: int = 8               # Best-of-N candidates sampled per forward
    num_frames: int | None = None          # video pipelines: frames per video (None: the wrapper's default)
    ema_decay: float | None = None         # keep an EMA of the trained weights (``trainer.ema``); None: off

    def validate(self):
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        if not isinstance(self.grad_steps, int) or not 1 <= self.grad_steps <= self.num_steps:
            raise ValueError(f"grad_steps (K) must be an int in [1, num_steps={self.num_steps}], "
                             f"got {self.grad_steps!r}")
        lo, hi = self.late_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"late_range must be fractions 0 <= lo <= hi <= 1, got {self.late_range!r}")
        first, last = self.step_range()
        if first > last:
            raise ValueError(f"late_range {self.late_range!r} with num_steps={self.num_steps} and "
                             f"grad_steps={self.grad_steps} leaves no step to stop at")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.autocast not in (None, "bf16"):
            raise ValueError(f"autocast must be None or 'bf16', got {self.autocast!r}")
        if self.lora_rank is not None and (not isinstance(self.lora_rank, int) or self.lora_rank < 1):
            raise ValueError(f"lora_rank must be a positive int or None (full finetuning), got {self.lora_rank!r}")
        if self.pretrain_weight < 0:
            raise ValueError(f"pretrain_weight must be >= 0, got {self.pretrain_weight}")
        if self.ema_decay is not None:
            check_decay(self.ema_decay, "ema_decay")

    def step_range(self) -> tuple[int, int]:
        """Inclusive range of the last gradient step j (0-based), within [K - 1, T - 1]."""
        t, k = self.num_steps, self.grad_steps
        lo, hi = self.late_range
        first = max(k - 1, int(math.floor(lo * t)))
        last = min(t - 1, max(int(math.ceil(hi * t)) - 1, 0))
        return first, last


class ReFLTrainer:
    """ReFL on a diffusers pipeline (FLUX, SD3, SD 1.5 / SDXL with DDIM, Wan 2.1 video) against a reward.

    pipe: a diffusers pipeline or a ``PipelineWrapper``. reward: a ``PairwiseReward`` (its references are built
    here from the base model: LoRA disabled, or before the first update for full finetuning), a
    ``PointwiseReward``, or any ``fn(images [N,3,H,W] float in [0,1], prompts) -> Tensor[N]`` (differentiable;
    video pipelines pass videos [N,T,3,H,W]).
    optimizer: your own, over ``trainer.parameters`` (default AdamW(lr, weight_decay)).
    Keyword overrides set ``ReFLConfig`` fields.
    """

    def __init__(self, pipe, reward, config: ReFLConfig | None = None, optimizer=None, **overrides):
        config = config or ReFLConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"unknown ReFL setting {k!r}; see ReFLConfig")
            setattr(config, k, v)
        config.validate()
        self.config = c = config
        if not callable(reward):
            raise TypeError(f"reward must be callable (images, prompts) -> Tensor, got {type(reward).__name__}")
        self.wrapper = adapt(pipe, c.guidance_scale, num_frames=c.num_frames)
        self.wrapper.check_size(c.height, c.width)
        if self.wrapper.video:
            c.num_frames = self.wrapper.num_frames  # recorded in refl_config.json
        self.reward = reward
        self.schedule = self.wrapper.schedule(c.num_steps, c.height, c.width)
        model = self.wrapper.model
        model.requires_grad_(False)
        if c.lora_rank is not None:
            from peft import LoraConfig  # optional

            names = [n for n, _ in model.named_modules()]
            for t in c.lora_targets:
                if not any(n == t or n.endswith("." + t) for n in names):
                    raise ValueError(f"lora_targets: {t!r} matched no module of {type(model).__name__}")
            with torch.random.fork_rng(devices=[]):  # LoRA init from the seed, without touching the caller's RNG
                torch.manual_seed(c.seed)
                model.add_adapter(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha or c.lora_rank,
                                             target_modules=list(c.lora_targets), init_lora_weights=True))
            params = [p for n, p in model.named_parameters() if "lora_" in n]
        else:
            params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        self.parameters = params
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        # the average of the recent weights, for evaluating or saving: ``with trainer.ema.swapped(): ...``
        self.ema = EMA(params, c.ema_decay) if c.ema_decay is not None else None
        self.generator = torch.Generator().manual_seed(c.seed)
        self.sampler = Sampler(self.wrapper.denoise, self.schedule, self.wrapper.evals_per_step, graphs=c.graphs)
        # Reference sampling runs with LoRA disabled; a separate sampler keeps its own captured graphs.
        self._base_sampler = Sampler(self.wrapper.denoise, self.schedule, self.wrapper.evals_per_step, graphs=c.graphs)
        self.updates = 0

    # ---- sampling ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def base_model(self):
        """The denoiser as it was before training: LoRA adapters disabled (a no-op for full finetuning)."""
        model = self.wrapper.model
        lora = self.config.lora_rank is not None
        if lora:
            model.disable_adapters()
        try:
            yield
        finally:
            if lora:
                model.enable_adapters()

    @torch.no_grad()
    def sample(self, prompts, generator=None, base: bool = False, batch_size: int | None = None) -> torch.Tensor:
        """Full sampling without gradient: images float32 [N, 3, H, W] in [0, 1] (videos: [N, T, 3, H, W]).

        base=True samples the base model (LoRA disabled). generator: a CPU torch.Generator (default: the trainer's).
        """
        c, wrapper = self.config, self.wrapper
        prompts = wrapper.check_prompts(prompts)
        gen = generator if generator is not None else self.generator
        sampler = self._base_sampler if base else self.sampler
        out = []
        ctx = self.base_model() if base else contextlib.nullcontext()
        bs = batch_size or len(prompts)
        with ctx, self._autocast():
            for s in range(0, len(prompts), bs):
                chunk = prompts[s:s + bs]
                x = wrapper.noise(len(chunk), c.height, c.width, gen)
                x, _ = sampler.run(x, 0, self.schedule.num_steps, wrapper.encode(chunk), generator=gen)
                out.append(wrapper.decode(x, c.height, c.width, tile=c.tile_vae))
        return torch.cat(out)

    def prepare_references(self, prompts, progress: bool = True):
        """Best-of-N references for every prompt (a no-op unless the reward is a PairwiseReward)."""
        if not isinstance(self.reward, PairwiseReward):
            return
        todo = [p for p in dict.fromkeys(self.wrapper.check_prompts(prompts)) if not self.reward.has_reference(p)]
        if todo and self.updates and self.config.lora_rank is None:
            raise RuntimeError(f"no Best-of-N reference for prompt {todo[0]!r}, and full finetuning has already "
                               "changed the base model: call prepare_references(all_prompts) before the first step")
        bs = self.config.reference_batch
        self.reward.prepare(todo, lambda p, n: self.sample([p] * n, base=True, batch_size=bs), progress=progress)

    # ---- the loss ---------------------------------------------------------------------------------------
    def _autocast(self):
        if self.config.autocast == "bf16":
            return torch.autocast(device_type=self.wrapper.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def draw_stop_step(self) -> int:
        """The last gradient step j, uniform over ``config.step_range()`` (from the trainer's generator)."""
        first, last = self.config.step_range()
        return first + int(torch.randint(0, last - first + 1, (1,), generator=self.generator))

    def loss(self, prompts, pretrain: tuple | None = None) -> tuple[torch.Tensor, dict]:
        """The ReFL loss of one batch (call ``.backward()`` on it yourself), and a dict of plain floats.

        prompts: B strings (one sample each). pretrain: optional (latents, prompts), clean latents in the
        denoiser's layout (``trainer.wrapper.encode_images(images)``; video wrappers take videos [N, T, 3, H, W]),
        mixed in with ``pretrain_weight``.
        """
        c, wrapper, sampler = self.config, self.wrapper, self.sampler
        prompts = wrapper.check_prompts(prompts)
        if pretrain is not None:
            self._check_pretrain(pretrain)
        self.prepare_references(prompts, progress=False)
        wrapper.set_gradient_checkpointing(c.memory_efficient)
        if hasattr(self.reward, "checkpoint"):
            self.reward.checkpoint = c.memory_efficient
        cond = wrapper.encode(prompts)
        x = wrapper.noise(len(prompts), c.height, c.width, self.generator)
        j = self.draw_stop_step()
        first = j - c.grad_steps + 1
        with torch.no_grad(), self._autocast():
            x, _ = sampler.run(x, 0, first, cond, generator=self.generator)
        with self._autocast():
            x = x.detach()
            x0 = None
            for i in range(first, j + 1):
                x, x0 = sampler.step(x, i, cond, generator=self.generator)
            images = wrapper.decode(x0, c.height, c.width, checkpoint=c.memory_efficient, tile=c.tile_vae)
        r = self.reward(images, prompts).float()
        if r.shape != (len(prompts),):
            raise ValueError(f"reward returned shape {tuple(r.shape)}, expected ({len(prompts)},)")
        loss = torch.relu(c.margin - r).mean() if c.loss == "relu" else -r.mean()
        info = {"reward": r.mean().item(), "refl_loss": loss.item(), "stop_step": j,
                "noise_level": self.schedule.noise_std(j)}
        if pretrain is not None and c.pretrain_weight > 0:
            pl = self.pretrain_loss(*pretrain)
            loss = loss + c.pretrain_weight * pl
            info["pretrain_loss"] = pl.item()
        info["loss"] = loss.item()
        return loss, info

    def _check_pretrain(self, pretrain):
        if not (isinstance(pretrain, (tuple, list)) and len(pretrain) == 2 and torch.is_tensor(pretrain[0])):
            raise ValueError("pretrain must be (latents tensor, prompts list)")
        latents, prompts = pretrain
        self.wrapper.check_prompts(prompts)
        if latents.shape[0] != len(prompts):
            raise ValueError(f"pretrain: {latents.shape[0]} latents but {len(prompts)} prompts")

    def pretrain_loss(self, latents: torch.Tensor, prompts) -> torch.Tensor:
        """The denoising loss the model was pretrained with (flow: v = eps - x0; VP: its prediction type), on
        clean latents [B, ...] in the denoiser's layout. Conditional only (no guidance)."""
        wrapper, s = self.wrapper, self.schedule
        x0 = latents.to(wrapper.device, torch.float32)
        t, level = s.training_levels(x0.shape[0], self.generator)
        eps = torch.randn(x0.shape, generator=self.generator).to(x0.device)
        level = level.to(x0.device)
        xt = combine(x0, eps, level, s.process).to(wrapper.dtype)
        with self._autocast():
            out = wrapper.predict(xt, t.to(wrapper.device, wrapper.dtype), *wrapper.positive(wrapper.encode(prompts)))
        target = training_target(x0, eps, level, s.process, s.prediction)
        return torch.nn.functional.mse_loss(out.float(), target)

    def step(self, prompts, pretrain: tuple | None = None) -> dict:
        """One optimizer update: zero grads, loss, backward, clip (max_grad_norm), step. Returns the info dict."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = self.loss(prompts, pretrain)
        loss.backward()
        if self.config.max_grad_norm is not None:
            info["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.updates += 1
        return info

    @torch.no_grad()
    def evaluate(self, prompts, seed: int = 0, reward=None) -> torch.Tensor:
        """The reward [N] of full samples from fixed noise (``seed``), without gradient: a before/after check."""
        images = self.sample(prompts, generator=torch.Generator().manual_seed(seed))
        return (reward or self.reward)(images, list(prompts)).float()

    def save(self, path):
        """Write the trained denoiser to ``path``, with refl_config.json.

        LoRA: the pipeline's own LoRA format (``pytorch_lora_weights.safetensors`` through the pipeline class's
        ``save_lora_weights``, keys under "transformer." or "unet.", rank and alpha in its metadata), so that
        ``pipe.load_lora_weights(path)`` on the base pipeline reproduces the trained denoiser. Full finetuning: the
        denoiser's ``save_pretrained`` (load it as the pipeline's transformer or unet).
        """
        os.makedirs(path, exist_ok=True)
        if self.config.lora_rank is not None:
            from peft.utils import get_peft_model_state_dict  # optional

            model, pipe = self.wrapper.model, self.wrapper.pipe
            component = next(n for n in ("transformer", "unet") if getattr(pipe, n, None) is model)
            type(pipe).save_lora_weights(path, **{
                f"{component}_lora_layers": get_peft_model_state_dict(model),
                f"{component}_lora_adapter_metadata": model.peft_config["default"].to_dict(),
            })
        else:
            self.wrapper.model.save_pretrained(path)
        with open(os.path.join(path, "refl_config.json"), "w") as fh:
            json.dump(asdict(self.config), fh, indent=2)
