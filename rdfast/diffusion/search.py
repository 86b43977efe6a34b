"""Search over Paths (Ma et al. 2025, as RewardDance uses it) and its Best-of-N baseline, with one NFE count.

Search over Paths, for one prompt:
  start N noises and denoise them to step ``start_step``; then, until the last step:
    re-noise every survivor from its level back by ``delta_f`` steps (exact forward re-noising) into M branches,
    denoise each branch forward by ``delta_b`` > ``delta_f`` steps,
    score the predicted clean image with the pointwise verifier and keep the N best;
  return the best of the last round.

Compute, counted in one place (here), per sample:
  denoiser evaluations (``search_nfe``), a classifier-free-guidance step counting 2:
    g * (N * start_step + sum over rounds N * M * steps_in_round);
  verifier evaluations (``search_verifier_calls``): one per image scored, N * M per round. The verifier scores the
    x0 predicted by each branch's last evaluation (a deterministic step keeps x0, so this costs no extra
    evaluation); at the last step it scores the final sample itself;
  total calls = denoiser evaluations + verifier evaluations (``total_calls``, ``search_calls``, ``best_of_n_calls``).
Best-of-N (Ma et al.'s random search) with K full samples costs g * K * T denoiser and K verifier evaluations. Its
K at equal compute: ``equal_total_calls_k`` (the largest K whose total calls do not exceed search's: the fair
comparison when the verifier is a VLM as costly as the denoiser), ``equal_verifier_calls_k`` (K = search's verifier
calls: Best-of-N then gets more denoiser calls) and ``equal_nfe_k`` (denoiser calls only).

    problem = pipeline_problem(pipe, "a red fox", num_steps=28, height=1024, width=1024)
    result = search_over_paths(problem, PointwiseReward(verifier_rm), n=4, m=4, start_step=10, delta_f=2, delta_b=4)
    result.save_json("tree.json"); result.save_figure("tree.png"); result.best_image   # [3, H, W]

Video pipelines (Wan 2.1) run unchanged: ``pipeline_problem(wan_pipe, prompt, ..., num_frames=17)`` decodes videos
[n, T, 3, H, W], the verifier scores them as videos, ``best_image`` is the best video [T, 3, H, W] and the figure
shows each survivor's middle frame.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from .pipelines import adapt
from .sampler import NFE, Sampler


@dataclass
class Problem:
    """What search needs from a generator, for one prompt.

    sampler: steps the denoiser (its ``nfe`` counts evaluations). noise(n, generator) -> starting latents [n, ...].
    decode(latents [n, ...]) -> images [n, 3, H, W] or videos [n, T, 3, H, W] in [0, 1] (points, for the toy).
    cond: conditioning tensors for one sample (batch 1), expanded per call.
    """

    sampler: Sampler
    noise: Callable
    decode: Callable
    prompt: str
    cond: tuple = ()

    @property
    def nfe(self) -> NFE:
        return self.sampler.nfe

    def cond_for(self, n: int) -> tuple:
        return tuple(c.expand(n, *c.shape[1:]) for c in self.cond)


def pipeline_problem(pipe, prompt: str, num_steps: int, height: int, width: int, guidance_scale=None,
                     graphs: bool = True, num_frames: int | None = None) -> Problem:
    """A search problem on a diffusers pipeline (FLUX / SD3 / Wan 2.1 with Euler flow matching, SD / SDXL with
    DDIM). num_frames: frames per video for video pipelines (None: the wrapper's default)."""
    wrapper = adapt(pipe, guidance_scale, num_frames=num_frames)
    [prompt] = wrapper.check_prompts([prompt])
    schedule = wrapper.schedule(num_steps, height, width)
    schedule.require_rewindable()
    sampler = Sampler(wrapper.denoise, schedule, wrapper.evals_per_step, graphs=graphs)
    return Problem(sampler, lambda n, g: wrapper.noise(n, height, width, g), lambda z: wrapper.decode(z, height, width),
                   prompt, wrapper.encode([prompt]))


def search_nfe(num_steps: int, n: int, m: int, start_step: int, delta_f: int, delta_b: int,
               evals_per_step: int = 1) -> int:
    """Denoiser evaluations Search over Paths spends (per-sample evaluations, CFG counted as 2)."""
    total, idx = n * start_step, start_step
    while idx < num_steps:
        back = idx - delta_f
        end = min(back + delta_b, num_steps)
        total += n * m * (end - back)
        idx = end
    return evals_per_step * total


def search_verifier_calls(num_steps: int, n: int, m: int, start_step: int, delta_f: int, delta_b: int) -> int:
    """Verifier evaluations Search over Paths spends: N * M images scored in each round."""
    return search_rounds(num_steps, start_step, delta_f, delta_b) * n * m


def total_calls(calls: dict) -> int:
    """Denoiser evaluations + verifier evaluations of a ``SearchResult.nfe``-like dict (each per sample)."""
    return int(calls["denoiser"]) + int(calls["verifier"])


def search_calls(num_steps: int, n: int, m: int, start_step: int, delta_f: int, delta_b: int,
                 evals_per_step: int = 1) -> dict:
    """{"denoiser", "verifier", "total"} calls of one Search over Paths run (what ``search_over_paths`` counts)."""
    calls = {"denoiser": search_nfe(num_steps, n, m, start_step, delta_f, delta_b, evals_per_step),
             "verifier": search_verifier_calls(num_steps, n, m, start_step, delta_f, delta_b)}
    return {**calls, "total": total_calls(calls)}


def best_of_n_calls(k: int, num_steps: int, evals_per_step: int = 1) -> dict:
    """{"denoiser", "verifier", "total"} calls of Best-of-K (what ``best_of_n`` counts): g * K * T and K."""
    calls = {"denoiser": evals_per_step * k * num_steps, "verifier": k}
    return {**calls, "total": total_calls(calls)}


def search_rounds(num_steps: int, start_step: int, delta_f: int, delta_b: int) -> int:
    """Number of rounds Search over Paths runs."""
    return max(0, math.ceil((num_steps - start_step) / (delta_b - delta_f)))


def check_search_args(num_steps, n, m, start_step, delta_f, delta_b):
    for name, v, lo in (("n", n, 1), ("m", m, 1), ("delta_f", delta_f, 1), ("delta_b", delta_b, 1)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if delta_b <= delta_f:
        raise ValueError(f"delta_b ({delta_b}) must be larger than delta_f ({delta_f}): each round must make progress")
    if not isinstance(start_step, int) or not delta_f <= start_step < num_steps:
        raise ValueError(f"start_step must be an int in [delta_f={delta_f}, num_steps={num_steps}), got {start_step!r} "
                         "(the first re-noising goes back delta_f steps from it)")


@dataclass
class SearchResult:
    """The outcome of a search (or Best-of-N) for one prompt; ``rounds`` is the search tree."""

    method: str
    prompt: str
    best_image: torch.Tensor          # [3, H, W] float in [0, 1] (video: [T, 3, H, W]; toy: a point)
    best_reward: float
    nfe: dict                         # {"denoiser": int, "verifier": int}
    config: dict
    rounds: list = field(default_factory=list)
    thumbnails: list = field(default_factory=list, repr=False)  # per round: survivors' images (CPU)
    final_rewards: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"method": self.method, "prompt": self.prompt, "best_reward": self.best_reward, "nfe": self.nfe,
                "config": self.config, "rounds": self.rounds, "final_rewards": self.final_rewards}

    def save_json(self, path):
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    def save_figure(self, path, baseline: "SearchResult | None" = None, max_rounds: int = 8):
        """Image grid (survivors of each round, best first) beside the reward-per-round plot (Agg backend)."""
        import matplotlib  # heavy

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # heavy

        rounds = self.rounds
        thumbs = self.thumbnails[-max_rounds:]
        is_image = bool(thumbs) and thumbs[0].dim() == 4
        cols = max((t.shape[0] for t in thumbs), default=1) if is_image else 0
        rows = len(thumbs) if is_image else 0
        fig = plt.figure(figsize=(1.3 * cols + 5, max(3.5, 1.3 * rows + 0.8)))
        grid = fig.add_gridspec(max(rows, 1), cols + 1, width_ratios=[1] * cols + [4.0])
        if is_image:
            offset = len(self.thumbnails) - len(thumbs)
            for r, t in enumerate(thumbs):
                for c in range(t.shape[0]):
                    ax = fig.add_subplot(grid[r, c])
                    ax.imshow(t[c].permute(1, 2, 0).clamp(0, 1).numpy())
                    ax.set_xticks([]), ax.set_yticks([])
                    if c == 0:
                        ax.set_ylabel(f"round {offset + r + 1}", fontsize=8)
                    kept = rounds[offset + r]["kept"] if rounds else list(range(t.shape[0]))
                    ax.set_title(f"{rounds[offset + r]['rewards'][kept[c]]:.5g}" if rounds else "", fontsize=7)
        ax = fig.add_subplot(grid[:, cols])
        for r, rd in enumerate(rounds, start=1):
            rw = rd["rewards"]
            ax.scatter([r] * len(rw), rw, s=8, color="0.6", zorder=1)
            ax.scatter([r] * len(rd["kept"]), [rw[k] for k in rd["kept"]], s=14, color="C0", zorder=2)
        if rounds:
            ax.plot(range(1, len(rounds) + 1), [max(rd["rewards"]) for rd in rounds], color="C0", label="search: best")
            ax.set_xticks(range(1, len(rounds) + 1))
        if baseline is not None:
            ax.axhline(baseline.best_reward, color="C3", ls="--",
                       label=f"Best-of-{len(baseline.final_rewards)} (NFE {baseline.nfe['denoiser']})")
        ax.set_xlabel("round")
        ax.set_ylabel("verifier reward")
        ax.set_title(f"Search over Paths, NFE {self.nfe['denoiser']}: best {self.best_reward:.4g}", fontsize=9)
        if rounds or baseline is not None:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _thumb(images: torch.Tensor, side: int = 64) -> torch.Tensor:
    images = images.detach().float().cpu()
    if images.dim() == 5:  # videos [n, T, 3, H, W]: the middle frame stands for each in the figure
        images = images[:, images.shape[1] // 2]
    if images.dim() == 4 and max(images.shape[-2:]) > side:
        images = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
    return images


def _score(verifier, images, prompt, nfe: NFE, batch: int | None) -> torch.Tensor:
    out = []
    bs = batch or images.shape[0]
    for s in range(0, images.shape[0], bs):
        chunk = images[s:s + bs]
        out.append(verifier(chunk, [prompt] * chunk.shape[0]).detach().float().cpu())
        nfe.verifier += chunk.shape[0]
    return torch.cat(out)


def _run(problem: Problem, x, start, stop, batch: int | None):
    """Steps start..stop-1 on x [B, ...] in chunks of ``batch`` (fixed shapes, so graphs are reused)."""
    if start >= stop:
        return x, None
    bs = batch or x.shape[0]
    xs, x0s = [], []
    for s in range(0, x.shape[0], bs):
        chunk = x[s:s + bs]
        xc, x0c = problem.sampler.run(chunk, start, stop, problem.cond_for(chunk.shape[0]))
        xs.append(xc)
        x0s.append(x0c)
    return torch.cat(xs), torch.cat(x0s)


@torch.no_grad()
def search_over_paths(problem: Problem, verifier, n: int = 4, m: int = 4, start_step: int | None = None,
                      delta_f: int = 1, delta_b: int = 2, generator: torch.Generator | None = None,
                      batch_size: int | None = None, progress: bool = True) -> SearchResult:
    """Search over Paths for ``problem.prompt``; returns the best sample, its reward, NFE and the search tree.

    verifier(images [B, 3, H, W] or videos [B, T, 3, H, W], prompts) -> Tensor[B] (e.g. PointwiseReward).
    start_step defaults to half the schedule. batch_size caps the denoiser's batch (N * M branches run in chunks).
    generator: CPU generator for the starting noises and the re-noising noise.
    """
    sampler = problem.sampler
    sched = sampler.schedule
    sched.require_rewindable()
    T = sched.num_steps
    start_step = T // 2 if start_step is None else start_step
    check_search_args(T, n, m, start_step, delta_f, delta_b)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    nfe = problem.nfe
    nfe0 = NFE(nfe.denoiser, nfe.verifier)
    total_rounds = search_rounds(T, start_step, delta_f, delta_b)
    bar = tqdm(total=total_rounds + 1, desc="search over paths", unit="round", disable=not progress)
    x = problem.noise(n, gen)
    x, x0 = _run(problem, x, 0, start_step, batch_size)
    bar.update(1)
    idx, rounds, thumbs = start_step, [], []
    rewards = kept_x0 = None
    while idx < T:
        back = idx - delta_f
        end = min(back + delta_b, T)
        parents = torch.arange(x.shape[0]).repeat_interleave(m)
        xb = x.index_select(0, parents.to(x.device))
        noise = torch.randn(xb.shape, generator=gen, dtype=torch.float32).to(xb.device)
        xb = sampler.renoise(xb, idx, back, noise)
        xb, x0b = _run(problem, xb, back, end, batch_size)
        final = end == T
        # the last round scores the samples themselves; decode in chunks like the denoiser
        z = xb if final else x0b
        bs = batch_size or z.shape[0]
        images = torch.cat([problem.decode(z[s:s + bs]) for s in range(0, z.shape[0], bs)])
        rewards = _score(verifier, images, problem.prompt, nfe, batch_size)
        kept = torch.argsort(rewards, descending=True, stable=True)[:n]
        x, kept_x0 = xb.index_select(0, kept.to(xb.device)), images.index_select(0, kept.to(images.device))
        rounds.append({"round": len(rounds) + 1, "from_step": idx, "renoise_to_step": back, "to_step": end,
                       "noise_from": sched.noise_std(idx), "noise_renoised": sched.noise_std(back),
                       "noise_to": sched.noise_std(end), "parents": parents.tolist(),
                       "rewards": rewards.tolist(), "kept": kept.tolist(),
                       "nfe_denoiser": nfe.denoiser - nfe0.denoiser})
        thumbs.append(_thumb(kept_x0))
        idx = end
        bar.update(1)
    bar.close()
    best = int(torch.argmax(rewards))
    best_image = images[best].detach().float().cpu()
    config = {"n": n, "m": m, "start_step": start_step, "delta_f": delta_f, "delta_b": delta_b, "num_steps": T,
              "evals_per_step": sampler.evals_per_step, "scheduler": sched.scheduler_name,
              "nfe_formula": search_nfe(T, n, m, start_step, delta_f, delta_b, sampler.evals_per_step)}
    return SearchResult("search_over_paths", problem.prompt, best_image, float(rewards[best]),
                        {"denoiser": nfe.denoiser - nfe0.denoiser, "verifier": nfe.verifier - nfe0.verifier},
                        config, rounds, thumbs, rewards.tolist())


@torch.no_grad()
def best_of_n(problem: Problem, verifier, k: int, generator: torch.Generator | None = None,
              batch_size: int | None = None, progress: bool = True) -> SearchResult:
    """Best-of-N (random search): k full samples, the best by the verifier. NFE = g * k * T."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (Best-of-N samples) must be a positive int, got {k!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    T = problem.sampler.schedule.num_steps
    nfe = problem.nfe
    nfe0 = NFE(nfe.denoiser, nfe.verifier)
    bs = batch_size or k
    rewards, best_image, best = [], None, -math.inf
    for s in tqdm(range(0, k, bs), desc=f"best-of-{k}", unit="batch", disable=not progress):
        x = problem.noise(min(bs, k - s), gen)
        x, _ = _run(problem, x, 0, T, None)
        images = problem.decode(x)
        r = _score(verifier, images, problem.prompt, nfe, None)
        rewards += r.tolist()
        i = int(torch.argmax(r))
        if float(r[i]) > best:
            best, best_image = float(r[i]), images[i].detach().float().cpu()
    return SearchResult("best_of_n", problem.prompt, best_image, best,
                        {"denoiser": nfe.denoiser - nfe0.denoiser, "verifier": nfe.verifier - nfe0.verifier},
                        {"k": k, "num_steps": T, "evals_per_step": problem.sampler.evals_per_step}, [], [], rewards)


def equal_nfe_k(nfe_budget: int, num_steps: int, evals_per_step: int = 1) -> int:
    """The largest Best-of-N K whose NFE (g * K * T) does not exceed ``nfe_budget`` (at least 1)."""
    return max(1, nfe_budget // (evals_per_step * num_steps))


def equal_total_calls_k(calls_budget: int, num_steps: int, evals_per_step: int = 1) -> int:
    """The largest Best-of-N K whose total calls (g * K * T denoiser + K verifier) do not exceed ``calls_budget``
    (e.g. ``total_calls(search_result.nfe)``); at least 1."""
    return max(1, int(calls_budget) // (evals_per_step * num_steps + 1))


def equal_verifier_calls_k(verifier_budget: int) -> int:
    """Best-of-N's K with as many verifier calls as ``verifier_budget`` (one per sample); at least 1."""
    return max(1, int(verifier_budget))
