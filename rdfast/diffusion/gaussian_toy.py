"""An analytic toy for search: Gaussian-mixture data, an exact denoiser, a verifier whose optimum is rare.

Data: a mixture of isotropic Gaussians in R^d (default: 8 modes on a circle of radius 3, std 0.25, in 2-D).
Under rectified flow x_t = (1 - s) x0 + s eps the posterior mean E[x0 | x_t] is exact in closed form:
    component k: x_t ~ N((1 - s) mu_k, v I), v = (1 - s)^2 tau^2 + s^2
    E[x0 | x_t, k] = mu_k + (1 - s) tau^2 / v * (x_t - (1 - s) mu_k),  weighted by the posterior of k,
and the denoiser returns the velocity v = (x_t - E[x0 | x_t]) / s (what FLUX/SD3 predict), so sampling with
the real Sampler on a real FlowMatchEulerDiscreteScheduler follows the data distribution.

Verifier: exp(-|x - target|^2 / (2 w^2)) with the target halfway between two neighbouring modes, a region of
low data density; samples rarely land near it, so selection along paths (search) has room to beat
independent sampling (Best-of-N).
"""
from __future__ import annotations

import math

import torch

from .sampler import Sampler, Schedule
from .search import Problem


class GaussianMixture:
    """Mixture of K isotropic Gaussians: means [K, d], std tau, weights [K] (uniform by default)."""

    def __init__(self, means: torch.Tensor, tau: float, weights: torch.Tensor | None = None):
        self.means = means.double()
        self.tau = float(tau)
        k = means.shape[0]
        self.weights = (weights.double() if weights is not None else torch.full((k,), 1.0 / k, dtype=torch.float64))

    @classmethod
    def ring(cls, k: int = 8, radius: float = 3.0, tau: float = 0.25) -> "GaussianMixture":
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        return cls(radius * torch.stack([angles.cos(), angles.sin()], 1), tau)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.tau * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)

    def x0_mean(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_sigma] for x [B, d] at flow levels sigma [B] (float64 math, x's dtype out)."""
        xd, s = x.double(), sigma.double().reshape(-1, 1, 1)
        mu = self.means.to(x.device)[None]                        # [1, K, d]
        a = 1.0 - s
        v = a ** 2 * self.tau ** 2 + s ** 2                       # [B, 1, 1]
        diff = xd[:, None, :] - a * mu                            # [B, K, d]
        logp = -0.5 * (diff ** 2).sum(-1) / v[..., 0] + torch.log(self.weights.to(x.device))[None]
        w = torch.softmax(logp, dim=1)[..., None]                 # [B, K, 1]
        cond = mu + (a * self.tau ** 2 / v) * diff
        return (w * cond).sum(1).to(x.dtype)

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, *cond) -> torch.Tensor:
        """Flow velocity at model timesteps t = 1000 * sigma: (x - E[x0 | x]) / sigma."""
        sigma = (t.double() / 1000.0).clamp_min(1e-6)
        return ((x.double() - self.x0_mean(x, sigma).double()) / sigma[:, None]).to(x.dtype)


class TargetVerifier:
    """reward(x) = exp(-|x - target|^2 / (2 width^2)) for points x [B, d] (prompts ignored)."""

    def __init__(self, target: torch.Tensor, width: float = 0.5):
        self.target = target.double()
        self.width = float(width)

    def __call__(self, x: torch.Tensor, prompts=None) -> torch.Tensor:
        d2 = ((x.double() - self.target.to(x.device)) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * self.width ** 2)).float()


def toy_problem(num_steps: int = 20, mixture: GaussianMixture | None = None, graphs: bool = False):
    """(Problem, verifier) for the default toy: 8-mode ring, target halfway between modes 0 and 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # heavy

    mix = mixture or GaussianMixture.ring()
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(num_steps)
    schedule = Schedule.from_scheduler(sched)
    sampler = Sampler(mix.denoiser, schedule, evals_per_step=1, graphs=graphs)
    d = mix.means.shape[1]

    def noise(n, generator):
        return torch.randn(n, d, generator=generator, dtype=torch.float64).float()

    target = 0.5 * (mix.means[0] + mix.means[1])
    return Problem(sampler, noise, lambda z: z, "toy", ()), TargetVerifier(target, width=0.5)
