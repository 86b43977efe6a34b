"""ReFL of the toy generator with a toy reward model (issue 13, deliverable 4): oracle alignment before and after.

Every run starts from the same generator (a fresh copy loaded from its folder) and spends the same budget
(``REFL_BUDGETS``): ``steps`` updates of ``batch`` prompts drawn from the in-domain prompts, full finetuning of
the FLUX transformer, loss = -reward (``loss="neg"``: the same objective for probabilities and for unbounded
scalars) plus ``pretrain_weight`` x the flow-matching loss on fresh renders of the same prompts, through
``rdfast.diffusion.ReFLTrainer`` unchanged. With ``ema_decay`` in the budget the aligned generator is the EMA of
the trained weights (the last iterate's alignment is reported beside it). Alignment is ``rdfast.toyworld.alignment`` (the
oracle) over all in-domain prompts x ``eval_seeds`` fixed noise seeds (0..S-1), the same seeds before and after.

Rewards:
- pairwise RM (generative, ``StudyPairwiseReward``): r = mean over the prompt's references of P(sample better
  than reference), the references drawn once per prompt from the base generator as Best-of-N (``n`` samples ranked
  by the RM's pairwise wins); ``reference="top"`` keeps the best ``top_k``, ``"bottom"`` the worst ``top_k``
  (the paper's reference ablation).
- regressive RM (Bradley-Terry scalar head, ``RegressiveReward``): no reference. Bradley-Terry fixes a reward only
  up to an additive constant, and P(a beats b) = sigmoid(r(a) - r(b)) is monotone in r(a) for any fixed b, so
  ascending the head's scalar r(sample, prompt) directly is ascending the win probability against any reference.

The reward's standard deviation over the last ``last`` steps (every sample's reward pooled) is the paper's
reward-hacking signal: a collapsing generator gives ever more similar rewards.

    from rdfast.toyworld import refl_study
    row = refl_study.run_refl("toy:generator", refl_study.pairwise_reward("toy:pairwise"), refl_study.REFL_BUDGETS["full"])
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from ..diffusion.pipelines import load_pipeline
from ..diffusion.refl import ReFLTrainer
from ..diffusion.reward import PairwiseReward
from ..train import load_trained
from .generator import SAMPLE_STEPS, sample
from .oracle import alignment
from .render import render, to_tensor
from .world import SIZE, prompts

REFL_BUDGETS = {
    # why these settings (README, "The toy RewardDance study"): stopping in the last 30% of the steps changed
    # details but no oracle verdict; from 25% on, the reward also reaches composition (count, shape), and the
    # pretraining loss on renders of the same prompts (weight 1) holds the generator near the data while the
    # reward is ascended. Steps x batch fit issue 13's 20 minutes for five runs on one core.
    "full": dict(steps=300, batch=4, lr=1e-4, n=8, top_k=2, eval_seeds=8, last=50, late_range=(0.25, 1.0),
                 grad_steps=1, pretrain_weight=1.0, prompts=None, seed=0),
    # plumbing only: two prompts, two updates
    "smoke": dict(steps=2, batch=2, lr=1e-4, n=2, top_k=1, eval_seeds=1, last=2, late_range=(0.25, 1.0),
                  grad_steps=1, pretrain_weight=1.0, prompts=2, seed=0),
}


def study_prompts(budget: dict) -> list[str]:
    """The in-domain prompts a budget trains and evaluates on (all 27 unless ``budget["prompts"]`` caps them)."""
    return [p.text for p in prompts("in_domain")[:budget.get("prompts")]]


def oracle_alignment(pipe, texts: list[str], eval_seeds: int) -> tuple[float, torch.Tensor, list[str]]:
    """(alignment, images [N, 3, 64, 64], their prompts) over ``texts`` x seeds 0..eval_seeds-1."""
    pool = [t for t in texts for _ in range(eval_seeds)]
    images = sample(pipe, pool, [s for _ in texts for s in range(eval_seeds)], SAMPLE_STEPS)
    return alignment(images, pool), images, pool


class StudyPairwiseReward(PairwiseReward):
    """``PairwiseReward`` (top or bottom Best-of-N references) that keeps every call's per-sample rewards in
    ``history`` (lists of floats)."""

    def __init__(self, rm, n: int, top_k: int, reference: str = "top"):
        super().__init__(rm, n=n, top_k=top_k, reference=reference)
        self.history: list[list[float]] = []

    def __call__(self, images, prompts_):
        r = super().__call__(images, prompts_)
        self.history.append(r.detach().float().cpu().tolist())
        return r


class RegressiveReward:
    """reward(images [N, 3, H, W] in [0, 1], prompts) = the regressive RM's scalar r(image, prompt), float32 [N],
    differentiable in the images (no reference: see the module docstring). ``history`` as StudyPairwiseReward."""

    def __init__(self, model):
        self.model = model
        self.history: list[list[float]] = []

    def __call__(self, images: torch.Tensor, prompts_) -> torch.Tensor:
        r = self.model.score(images=list(images.float().unbind(0)), prompts=list(prompts_))
        self.history.append(r.detach().float().cpu().tolist())
        return r.to(images.device)


class NoReward:
    """The control run: reward 0 for every sample, so ReFL's update is the pretraining (flow-matching) loss alone.
    Separates what the reward adds from what more flow-matching steps on renders do. ``history`` as above."""

    def __init__(self):
        self.history: list[list[float]] = []

    def __call__(self, images: torch.Tensor, prompts_) -> torch.Tensor:
        self.history.append([0.0] * images.shape[0])
        return images.sum(dim=(1, 2, 3)) * 0.0  # attached to the graph, so the backward pass stays the same


def load_reward_model(path):
    """(model, paradigm) of a trained reward model folder or ``toy:`` name, frozen, float32 on CPU."""
    model, paradigm = load_trained(path, device="cpu")
    rm = model.rm if paradigm == "regressive" else model
    rm.model.requires_grad_(False)  # rewards need gradients to the images only
    return model, paradigm


def pairwise_reward(path, budget: dict, reference: str = "top") -> StudyPairwiseReward:
    model, paradigm = load_reward_model(path)
    if paradigm != "pairwise":
        raise ValueError(f"{path} holds a {paradigm} reward model, not a pairwise one")
    return StudyPairwiseReward(model, budget["n"], budget["top_k"], reference)


def regressive_reward(path) -> RegressiveReward:
    model, paradigm = load_reward_model(path)
    if paradigm != "regressive":
        raise ValueError(f"{path} holds a {paradigm} reward model, not a regressive one")
    return RegressiveReward(model)


def reward_std_last(history: list[list[float]], last: int) -> float:
    """Standard deviation of every sample's reward over the last ``last`` steps (pooled)."""
    pooled = [r for step in history[-last:] for r in step]
    return float(np.std(pooled)) if pooled else float("nan")


def run_refl(generator, reward, budget: dict, base_alignment: float | None = None, progress: bool = True,
             log=sys.stderr, save_to=None) -> dict:
    """ReFL of the generator (a folder or ``toy:generator``) against ``reward`` (StudyPairwiseReward or
    RegressiveReward) for ``budget``; returns plain data: base and aligned oracle alignment, the reward's mean
    over the first and last ``last`` steps and its std over the last, per-step mean rewards, seconds.
    ``base_alignment``: the base generator's alignment on the same prompts and seeds, if already measured.
    Also returns ``images`` (float [N, 3, 64, 64]) and ``prompts``: the aligned generator's evaluation samples.
    ``save_to``: a folder to save the aligned generator in (``save_pretrained``; loads with ``load_pipeline``)."""
    texts = study_prompts(budget)
    t0, cpu0 = time.perf_counter(), time.process_time()
    pipe = load_pipeline(generator, device="cpu")
    if base_alignment is None:
        base_alignment, _, _ = oracle_alignment(pipe, texts, budget["eval_seeds"])
    trainer = ReFLTrainer(pipe, reward, height=SIZE, width=SIZE, num_steps=SAMPLE_STEPS, lora_rank=None,
                          lr=budget["lr"], loss="neg", grad_steps=budget["grad_steps"],
                          late_range=tuple(budget["late_range"]), graphs=False, memory_efficient=False,
                          reference_batch=max(2, budget.get("n", 2)), seed=budget["seed"],
                          pretrain_weight=budget.get("pretrain_weight", 0.0), ema_decay=budget.get("ema_decay"))
    trainer.prepare_references(texts, progress=False)  # full finetuning: every reference before the first update
    rng = np.random.default_rng(budget["seed"])
    order: list[int] = []
    step_rewards = []
    for _ in tqdm(range(budget["steps"]), desc="ReFL", unit="step", disable=not progress, file=log):
        if len(order) < budget["batch"]:
            order += rng.permutation(len(texts)).tolist()
        batch, order = order[:budget["batch"]], order[budget["batch"]:]
        chosen = [texts[i] for i in batch]
        pretrain = None
        if budget.get("pretrain_weight", 0) > 0:  # renders of the same prompts: the denoising loss keeps the data
            images = to_tensor([render(t, int(rng.integers(2 ** 31))) for t in chosen])
            pretrain = (trainer.wrapper.encode_images(images, torch.Generator().manual_seed(int(rng.integers(2 ** 31)))),
                        chosen)
        info = trainer.step(chosen, pretrain)
        step_rewards.append(info["reward"])
    pipe.transformer.requires_grad_(False)
    last_iterate = None
    if trainer.ema is not None:  # the run's result is the averaged weights; the last iterate is kept for comparison
        last_iterate, _, _ = oracle_alignment(pipe, texts, budget["eval_seeds"])
        trainer.ema.copy_to()
    if save_to is not None:
        pipe.save_pretrained(save_to)
    aligned, images, pool = oracle_alignment(pipe, texts, budget["eval_seeds"])
    last = budget["last"]
    return {"base_alignment": base_alignment, "aligned_alignment": aligned,
            "reward_first": float(np.mean(step_rewards[:last])), "reward_last": float(np.mean(step_rewards[-last:])),
            "reward_std_last": reward_std_last(reward.history, last), "step_rewards": step_rewards,
            "steps": budget["steps"], "batch": budget["batch"], "eval_samples": len(pool),
            "ema_decay": budget.get("ema_decay"), "last_iterate_alignment": last_iterate,
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "images": images, "prompts": pool}
