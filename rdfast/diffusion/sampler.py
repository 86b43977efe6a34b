"""The one sampler layer: noise levels, x0 prediction, the update, re-noising, guidance and NFE counting.

Every Gaussian forward process rdfast meets is  x = alpha(level) * x0 + sigma(level) * eps:

    rectified flow (FLUX, SD3; FlowMatchEulerDiscreteScheduler): level = sigma in [0, 1],
        alpha = 1 - sigma, sigma = sigma                       (the model predicts v = eps - x0)
    variance preserving (SD 1.5; DDIM, DDPM): level = alpha_bar in (0, 1],
        alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)   (the model predicts eps, v or x0)

so each concept below is written once, in terms of (alpha, sigma):
  ``coefficients``  level -> (alpha, sigma)                       (the only place the two processes differ)
  ``split``         model output -> (x0, eps)                     (x0 prediction; flow: x0 = x_t - sigma v)
  ``combine``       (x0, eps) at a level                          (the deterministic update and add-noise)
  ``renoise``       x at a lower level -> a higher level, exactly (forward re-noising, for search)
  ``guide``         classifier-free guidance
  ``NFE``           denoiser and verifier evaluation counts

A deterministic step from level l to l' is ``combine(split(out, x, l), l')``: for flow this is exactly Euler
(x + (sigma' - sigma) v) and for VP exactly DDIM with eta = 0; tests hold both to the diffusers schedulers.
Because the step keeps (x0, eps), the x0 predicted from the last evaluation is the x0 of the stepped state:
search scores it without an extra evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .graphs import GraphRunner

FLOW, VP = "flow", "vp"
#: scheduler class names the sampler reads, and whether search may rewind them (deterministic, stateless steps)
SUPPORTED = {"FlowMatchEulerDiscreteScheduler": True, "DDIMScheduler": True, "DDPMScheduler": False}


class UnsupportedScheduler(ValueError):
    """The scheduler cannot be used (for this purpose); the message names what can."""


# ---- the formulas (each written once) --------------------------------------------------------------------
def coefficients(level: torch.Tensor, process: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of x = alpha * x0 + sigma * eps at ``level`` (flow: sigma; vp: alpha_bar). Same shape as level."""
    level = torch.as_tensor(level)
    if process == FLOW:
        return 1.0 - level, level
    if process == VP:
        return level.sqrt(), (1.0 - level).clamp_min(0).sqrt()
    raise ValueError(f"process must be {FLOW!r} or {VP!r}, got {process!r}")


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] coefficient, shaped to broadcast against x [B, ...], in float32 on x's device."""
    c = torch.as_tensor(c, device=x.device).to(torch.float32)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def split(model_output: torch.Tensor, x: torch.Tensor, level, process: str, prediction: str,
          clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) predicted from a model output at ``level``; both float32 with x's shape.

    prediction: "flow" (v = eps - x0; x0 = x - sigma v, eps = x + (1 - sigma) v), "epsilon", "v_prediction"
    (v = alpha eps - sigma x0) or "sample". ``clip`` clamps x0 to [-clip, clip] (DDIM's clip_sample); eps keeps
    the model's value, as diffusers' DDIM does.
    """
    a, s = (_bcast(c, x) for c in coefficients(torch.as_tensor(level), process))
    x, out = x.float(), model_output.float()
    if prediction == "flow":
        x0, eps = x - s * out, x + a * out
    elif prediction == "epsilon":
        x0, eps = (x - s * out) / a, out
    elif prediction == "v_prediction":
        x0, eps = a * x - s * out, a * out + s * x
    elif prediction == "sample":
        x0, eps = out, (x - a * out) / s
    else:
        raise ValueError(f"unknown prediction type {prediction!r}")
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return x0, eps


def combine(x0: torch.Tensor, eps: torch.Tensor, level, process: str) -> torch.Tensor:
    """alpha(level) * x0 + sigma(level) * eps: the forward process (add-noise) and the deterministic update."""
    a, s = (_bcast(c, x0) for c in coefficients(torch.as_tensor(level), process))
    return a * x0 + s * eps


def renoise(x: torch.Tensor, level_from, level_to, process: str, noise: torch.Tensor) -> torch.Tensor:
    """Exact forward re-noising of x from a lower noise level to a higher one.

    With x = a x0 + s e1 and target x' = a' x0 + s' e:  x' = (a'/a) x + sqrt(s'^2 - (a'/a)^2 s^2) * noise.
    rectified flow:  x_s = (1-s)/(1-t) x_t + sqrt(s^2 - t^2 (1-s)^2 / (1-t)^2) eps
    VP:              x_s = sqrt(abar_s/abar_t) x_t + sqrt(1 - abar_s/abar_t) eps
    (the common x_t + sqrt(s^2 - t^2) eps is wrong for rectified flow: it keeps x0's scale at 1 - t).
    x: [B, ...]; noise: standard normal, x's shape. Returns x's dtype.
    """
    a0, s0 = coefficients(torch.as_tensor(level_from, dtype=torch.float64), process)
    a1, s1 = coefficients(torch.as_tensor(level_to, dtype=torch.float64), process)
    if bool((a0 <= 0).any()):
        raise ValueError("cannot re-noise from pure noise (alpha = 0 at the starting level)")
    ratio = a1 / a0
    var = s1 ** 2 - ratio ** 2 * s0 ** 2
    if bool((var < -1e-9).any()):
        raise ValueError(f"re-noising must go to a higher noise level (from {level_from}, to {level_to})")
    out = _bcast(ratio, x) * x.float() + _bcast(var.clamp_min(0).sqrt(), x) * noise.float()
    return out.to(x.dtype)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def training_target(x0: torch.Tensor, eps: torch.Tensor, level, process: str, prediction: str) -> torch.Tensor:
    """What the denoiser is trained to output at ``level`` (for the pretraining loss mixed into ReFL)."""
    a, s = (_bcast(c, x0) for c in coefficients(torch.as_tensor(level), process))
    if prediction == "flow":
        return eps - x0
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return a * eps - s * x0
    if prediction == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction!r}")


@dataclass
class NFE:
    """Evaluation counts. ``denoiser``: single-sample denoiser evaluations (a batch of B with classifier-free
    guidance counts 2B: its real number of evaluations). ``verifier``: images scored by a verifier."""

    denoiser: int = 0
    verifier: int = 0

    def as_dict(self) -> dict:
        return {"denoiser": self.denoiser, "verifier": self.verifier}


# ---- the schedule of one diffusers scheduler ---------------------------------------------------------------
@dataclass
class Schedule:
    """Noise levels of a diffusers scheduler after ``set_timesteps``, as plain tensors (float64 on CPU).

    timesteps [T]: what the denoiser is given at step i. model_levels [T]: the level the model assumes at step i.
    levels [T + 1]: the level of the state before step i (levels[T] is the final one). For flow and DDIM with
    "leading" spacing levels[i] == model_levels[i]; DDIM steps to alpha_bar[t - 1000 // T], exactly as diffusers.
    """

    process: str
    prediction: str
    timesteps: torch.Tensor
    model_levels: torch.Tensor
    levels: torch.Tensor
    rewindable: bool
    scheduler_name: str
    clip: float | None = None
    scheduler: object = field(default=None, repr=False)  # kept for non-rewindable (stochastic) steps
    train_levels: torch.Tensor | None = field(default=None, repr=False)  # VP: alpha_bar per training timestep

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def noise_std(self, i: int) -> float:
        """sigma of the state before step i (a process-independent noise level, for reports)."""
        return float(coefficients(self.levels[i], self.process)[1])

    @classmethod
    def from_scheduler(cls, scheduler) -> "Schedule":
        """Read a scheduler on which ``set_timesteps`` has been called. Clear error for unsupported ones."""
        name = type(scheduler).__name__
        if name not in SUPPORTED:
            raise UnsupportedScheduler(
                f"scheduler {name} is not supported; rdfast samples with {', '.join(SUPPORTED)} "
                "(search needs FlowMatchEulerDiscreteScheduler or DDIMScheduler). Swap it in with "
                "e.g. DDIMScheduler.from_config(pipe.scheduler.config)")
        config = scheduler.config
        if getattr(scheduler, "timesteps", None) is None or getattr(scheduler, "num_inference_steps", None) is None:
            raise ValueError(f"{name}: call set_timesteps before reading the schedule")
        timesteps = scheduler.timesteps.detach().to("cpu", torch.float64)
        if name == "FlowMatchEulerDiscreteScheduler":
            for flag in ("stochastic_sampling", "invert_sigmas"):
                if config.get(flag):
                    raise UnsupportedScheduler(f"{name} with {flag}=True is not supported")
            sigmas = scheduler.sigmas.detach().to("cpu", torch.float64)
            return cls(FLOW, "flow", timesteps, sigmas[:-1].clone(), sigmas.clone(), True, name, scheduler=scheduler)
        if config.get("thresholding"):
            raise UnsupportedScheduler(f"{name} with thresholding=True (dynamic thresholding) is not supported")
        prediction = config.prediction_type
        abar = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
        steps = timesteps.long()
        model_levels = abar[steps]
        if name == "DDIMScheduler":
            final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
            prev = steps - config.num_train_timesteps // scheduler.num_inference_steps
        else:  # DDPM: its own previous_timestep
            final = torch.tensor(1.0, dtype=torch.float64)
            prev = torch.tensor([int(scheduler.previous_timestep(int(t))) for t in steps])
        nxt = torch.where(prev >= 0, abar[prev.clamp_min(0)], final)
        levels = torch.cat([model_levels[:1], nxt])
        clip = float(config.clip_sample_range) if config.get("clip_sample") else None
        return cls(VP, prediction, timesteps, model_levels, levels, SUPPORTED[name], name, clip=clip,
                   scheduler=scheduler, train_levels=abar)

    def require_rewindable(self, what="search"):
        if not self.rewindable:
            raise UnsupportedScheduler(
                f"{what} needs a scheduler that can be rewound (FlowMatchEulerDiscreteScheduler or DDIMScheduler); "
                f"{self.scheduler_name} steps stochastically. Use DDIMScheduler.from_config(pipe.scheduler.config)")

    def training_levels(self, n: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(model timesteps [n], levels [n]) drawn as in pretraining: flow sigma ~ U(0, 1), VP t ~ U{0..T-1}."""
        if self.process == FLOW:
            sigma = torch.rand(n, generator=generator, dtype=torch.float64)
            return sigma * 1000.0, sigma  # diffusers' flow timesteps are sigma * num_train_timesteps
        t = torch.randint(0, len(self.train_levels), (n,), generator=generator)
        return t.double(), self.train_levels[t]


# ---- stepping a denoiser ------------------------------------------------------------------------------------
class Sampler:
    """Steps a denoiser along a Schedule, counting evaluations; optionally through captured CUDA graphs.

    denoiser(x, t, *cond) -> model output (guided), x: [B, ...] latents, t: [B] model timesteps (x's dtype),
    cond: tensors with batch B first (or batch-free); it must evaluate ``evals_per_step`` times per sample
    (2 with classifier-free guidance). ``graphs=True`` captures the whole step (denoiser and update) once per
    input shape on CUDA and replays it when no gradient is needed; on CPU, or with ``graphs=False``, it is eager.
    """

    def __init__(self, denoiser, schedule: Schedule, evals_per_step: int = 1, graphs: bool = True,
                 nfe: NFE | None = None):
        self.denoiser = denoiser
        self.schedule = schedule
        self.evals_per_step = int(evals_per_step)
        self.nfe = nfe if nfe is not None else NFE()
        self._graphed = GraphRunner(self._step_tensors, enabled=graphs)
        self._level_cache = {}

    @property
    def graphs(self) -> GraphRunner:
        return self._graphed

    def _levels(self, i: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, str(device))
        if key not in self._level_cache:
            s = self.schedule
            self._level_cache[key] = (s.model_levels[i].to(device, torch.float32),
                                      s.levels[i + 1].to(device, torch.float32))
        return self._level_cache[key]

    def _step_tensors(self, x, t, level, level_next, *cond):
        """One deterministic step from tensors only (so it can be graph-captured): (x_next, x0), x's dtype."""
        s = self.schedule
        out = self.denoiser(x, t, *cond)
        x0, eps = split(out, x, level, s.process, s.prediction, s.clip)
        return combine(x0, eps, level_next, s.process).to(x.dtype), x0.to(x.dtype)

    def step(self, x: torch.Tensor, i: int, cond=(), generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step i (0 <= i < T): the state before step i -> (state after it, x0 predicted at step i), x's shape/dtype."""
        s = self.schedule
        if not 0 <= i < s.num_steps:
            raise IndexError(f"step {i} outside the schedule's {s.num_steps} steps")
        t = s.timesteps[i].to(x.device, x.dtype).expand(x.shape[0])
        self.nfe.denoiser += x.shape[0] * self.evals_per_step
        if not s.rewindable:  # stochastic (DDPM): the scheduler's own step, eager
            out = self.denoiser(x, t, *cond)
            x0, _ = split(out, x, s.model_levels[i], s.process, s.prediction, s.clip)
            nxt = s.scheduler.step(out, int(s.timesteps[i]), x, generator=generator, return_dict=False)[0]
            return nxt.to(x.dtype), x0.to(x.dtype)
        level, level_next = self._levels(i, x.device)
        if torch.is_grad_enabled():  # graphs replay without autograd: gradient steps stay eager
            return self._step_tensors(x, t, level, level_next, *cond)
        return self._graphed(x, t, level, level_next, *cond)

    def run(self, x: torch.Tensor, start: int, stop: int, cond=(), generator=None, progress=None):
        """Steps start..stop-1; returns (x after them, x0 predicted at the last one, or None if no step ran)."""
        x0 = None
        for i in range(start, stop):
            x, x0 = self.step(x, i, cond, generator)
            if progress is not None:
                progress.update(1)
        return x, x0

    def renoise(self, x: torch.Tensor, state_index: int, to_index: int, noise: torch.Tensor) -> torch.Tensor:
        """Re-noise a state that sits before step ``state_index`` back to the level the model assumes at step
        ``to_index`` (< state_index). x, noise: [B, ...]."""
        s = self.schedule
        s.require_rewindable()
        if not 0 <= to_index < state_index <= s.num_steps:
            raise IndexError(f"re-noising goes back: need 0 <= to ({to_index}) < from ({state_index}) <= {s.num_steps}")
        return renoise(x, s.levels[state_index], s.model_levels[to_index], s.process, noise)


def sigma_of(level: float, process: str) -> float:
    """The noise standard deviation at a level (flow: the level itself; VP: sqrt(1 - alpha_bar))."""
    return float(level) if process == FLOW else math.sqrt(max(0.0, 1.0 - float(level)))
