"""Train the toy generator: the autoencoder on renders, then the FLUX transformer by flow matching on its latents.

    python -m rdfast.toyworld.train_generator --out DIR --json curve.json [--ae-seconds 240 --flow-seconds 600 --threads 1]

Only in-domain prompts are ever rendered (the OOD combinations stay unseen). Every few minutes the EMA
transformer samples all in-domain prompts x fixed seeds through rdfast.diffusion's sampler and the oracle reads
them: the learning curve (alignment vs steps), written as JSON (and a PNG with ``--png``). The final pipeline
(EMA weights) is saved with ``save_pretrained`` in DIR. Deterministic from ``--seed`` on one machine and thread
count. Stage budgets are CPU seconds of this process (``time.process_time``), so that a busy shared machine gives
the same steps as an idle one, only later; wall time and load are recorded beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ..diffusion.pipelines import adapt
from ..diffusion.sampler import combine, training_target
from .generator import DEFAULTS, SAMPLE_STEPS, build_pipeline, build_vae, sample, shifted
from .oracle import alignment
from .render import render, to_tensor
from .world import SIZE, prompts


def renders(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """n fresh in-domain renders (float [n, 3, 64, 64] in [0, 1]) and their prompt indices."""
    pool = prompts("in_domain")
    which = rng.integers(len(pool), size=n)
    seeds = rng.integers(2 ** 31, size=n)
    return to_tensor([render(pool[i], int(s)) for i, s in zip(which, seeds)]), which


def train_vae(vae, rng, seconds: float, max_steps: int, batch: int = 32, lr: float = 2e-3, kl: float = 1e-5,
              log=print, eval_every: int = 0) -> dict:
    """Reconstruction (object pixels weighted 5x, as they are few) + a small KL, for ``seconds`` or ``max_steps``;
    every ``eval_every`` steps (0: never) the oracle alignment of reconstructions joins the result's curve."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train().requires_grad_(True)
    start, wall, step, losses, curve = time.process_time(), time.perf_counter(), 0, [], []
    while step < max_steps and time.process_time() - start < seconds:
        images, _ = renders(rng, batch)
        x = images * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(torch.Generator().manual_seed(int(rng.integers(2 ** 31))))).sample
        weight = 1 + 4 * (images.min(dim=1, keepdim=True).values < 0.9).float()
        loss = (weight * (recon - x) ** 2).mean() + kl * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"vae step {step}: loss {np.mean(losses[-50:]):.4f} ({time.process_time() - start:.0f} cpu s)")
        if eval_every and step % eval_every == 0:
            cpu = time.process_time() - start
            vae.eval()
            score = vae_alignment(vae, np.random.default_rng(step))
            vae.train()
            curve.append({"step": step, "cpu_seconds": round(cpu, 1), "loss": float(np.mean(losses[-20:])),
                          "reconstruction_alignment": score})
            log(f"vae step {step}: reconstruction alignment {score:.3f}")
            start += time.process_time() - start - cpu  # evaluation is not training time
    vae.eval().requires_grad_(False)
    return {"steps": step, "cpu_seconds": time.process_time() - start, "wall_seconds": time.perf_counter() - wall,
            "final_loss": float(np.mean(losses[-20:])), "curve": curve}


@torch.no_grad()
def calibrate_latents(pipe, rng, n: int = 256) -> None:
    """Set the VAE's shift and scaling factors so that the transformer sees latents of mean 0 and std 1."""
    images, _ = renders(rng, n)
    z = pipe.vae.encode(images * 2 - 1).latent_dist.mode()
    pipe.vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))


@torch.no_grad()
def vae_alignment(vae, rng, n: int = 108) -> float:
    """Oracle alignment of the autoencoder's reconstructions of fresh renders: the generator's ceiling."""
    pool = prompts("in_domain")
    images, which = renders(rng, n)
    recon = (vae.decode(vae.encode(images * 2 - 1).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
    return alignment(recon, [pool[i] for i in which])


@torch.no_grad()
def latent_dataset(wrapper, rng, n: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n in-domain renders as packed latents [n, 64, 4C] and their prompt indices [n]."""
    latents, labels = [], []
    for start in range(0, n, batch):
        images, which = renders(rng, min(batch, n - start))
        latents.append(wrapper.encode_images(images, torch.Generator().manual_seed(int(rng.integers(2 ** 31)))))
        labels.append(torch.from_numpy(which))
    return torch.cat(latents), torch.cat(labels)


class EMA:
    """Exponential moving average of a module's parameters (warm-up: decay (1 + step) / (10 + step), capped)."""

    def __init__(self, module, decay: float):
        self.decay, self.step = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module):
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for k, v in module.state_dict().items():
            self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d) if v.is_floating_point() else self.shadow[k].copy_(v)

    def swap(self, module):
        """Exchange the module's weights with the average (call twice to swap back)."""
        current = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        self.shadow = current


def evaluate(pipe, seeds, steps: int = SAMPLE_STEPS) -> tuple[float, torch.Tensor]:
    """(oracle alignment, images) over all in-domain prompts x ``seeds``."""
    pool = [p for p in prompts("in_domain") for _ in seeds]
    images = sample(pipe, pool, [s for _ in prompts("in_domain") for s in seeds], steps)
    return alignment(images, pool), images


def train_flow(pipe, rng, seconds: float, max_steps: int, data: int, batch: int, lr: float, ema_decay: float,
               eval_every: float, eval_seeds, log=print, on_eval=None) -> dict:
    """Flow matching on a fixed set of ``data`` encoded renders; the learning curve every ``eval_every`` CPU s.
    ``on_eval(curve)`` runs after each curve point with the EMA weights in the model (to save progress)."""
    wrapper = adapt(pipe)
    t0 = time.perf_counter()
    latents, labels = latent_dataset(wrapper, rng, data)
    cond_all = wrapper.encode([p.text for p in prompts("in_domain")])
    encode_seconds = time.perf_counter() - t0
    model = pipe.transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(model, ema_decay)
    curve, losses, step, train_seconds, next_eval = [], [], 0, 0.0, 0.0
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    while True:
        if train_seconds >= next_eval or step >= max_steps or train_seconds >= seconds:
            ema.swap(model)
            model.eval()
            t_eval = time.perf_counter()
            score, _ = evaluate(pipe, eval_seeds)
            curve.append({"step": step, "train_cpu_seconds": round(train_seconds, 1), "alignment": score,
                          "loss": float(np.mean(losses[-50:])) if losses else None})
            if on_eval is not None:
                on_eval(curve)
            ema.swap(model)
            model.train()
            log(f"flow step {step} ({train_seconds:.0f} s): alignment {score:.3f}, loss {curve[-1]['loss']}, "
                f"eval {time.perf_counter() - t_eval:.0f} s")
            next_eval += eval_every
            if step >= max_steps or train_seconds >= seconds:
                break
        t_step = time.process_time()
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        sigma = shifted(torch.rand(batch, generator=gen, dtype=torch.float64))
        x_t = combine(x0, eps, sigma, "flow")
        target = training_target(x0, eps, sigma, "flow", "flow")
        pred = wrapper.predict(x_t, (sigma * 1000).float(), *wrapper.take(cond_all, labels[idx]))
        loss = (pred.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:  # linear warm-up over the first 100 steps
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        opt.step()
        ema.update(model)
        losses.append(float(loss.detach()))
        step += 1
        train_seconds += time.process_time() - t_step
    ema.swap(model)  # ship the average
    model.eval().requires_grad_(False)
    return {"steps": step, "train_cpu_seconds": train_seconds, "encode_seconds": encode_seconds, "curve": curve}


def save_curve_png(result: dict, path: str) -> None:
    import matplotlib  # heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy

    fig, ax = plt.subplots(figsize=(5, 3.2))
    curve = result["flow"]["curve"]
    ax.plot([c["step"] for c in curve], [c["alignment"] for c in curve], marker="o")
    ax.axhspan(0.3, 0.8, color="green", alpha=0.1, label="target 0.3-0.8")
    ax.set_xlabel("flow-matching steps")
    ax.set_ylabel("oracle alignment (in-domain)")
    ax.set_title(f"toy generator: {result['design']}", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to save the trained pipeline in")
    parser.add_argument("--json", required=True, help="where to write the learning curve and the run's record")
    parser.add_argument("--png", help="where to draw the learning curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ae-seconds", type=float, default=240)
    parser.add_argument("--ae-steps", type=int, default=100000)
    parser.add_argument("--ae-eval-every", type=int, default=0, help="steps between reconstruction checks (0: none)")
    parser.add_argument("--ae-only", action="store_true", help="stop after the autoencoder (design studies)")
    parser.add_argument("--vae", help="a trained autoencoder's folder (from --ae-only): skip the autoencoder stage")
    parser.add_argument("--flow-seconds", type=float, default=600)
    parser.add_argument("--flow-steps", type=int, default=100000)
    parser.add_argument("--data", type=int, default=4096, help="encoded renders the transformer trains on")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--eval-every", type=float, default=150, help="CPU seconds of training between curve points")
    parser.add_argument("--eval-seeds", type=int, default=4, help="seeds per prompt for the curve (0..N-1)")
    for key, value in DEFAULTS.items():
        kind = (lambda s: tuple(int(v) for v in s.split(","))) if isinstance(value, tuple) else int
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    arch = {k: getattr(args, k) for k in DEFAULTS}
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    if args.vae:
        from diffusers import AutoencoderKL  # heavy

        # the data drawn later differ from a full run's (the autoencoder stage draws from the same rng)
        vae = AutoencoderKL.from_pretrained(args.vae).eval().requires_grad_(False)
        ae = {"loaded_from": os.path.abspath(args.vae)}
    else:
        vae = build_vae(arch["vae_channels"], arch["latent_channels"])
        ae = train_vae(vae, rng, args.ae_seconds, args.ae_steps, eval_every=args.ae_eval_every)
    ae["reconstruction_alignment"] = vae_alignment(vae, np.random.default_rng(args.seed + 1))
    print(f"autoencoder: {ae}")
    if args.ae_only:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "autoencoder": ae, "load_before": load_before, "load_after": os.getloadavg(),
                       "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time()}, fh, indent=1)
        vae.save_pretrained(os.path.join(args.out, "vae"), safe_serialization=True)
        return ae
    pipe = build_pipeline(args.seed, vae=vae, **arch)
    calibrate_latents(pipe, rng)

    def save_progress(curve):
        pipe.save_pretrained(args.out, safe_serialization=True)
        with open(args.json + ".partial", "w") as fh:
            json.dump({"autoencoder": ae, "curve": curve, "wall_seconds": time.perf_counter() - t0,
                       "load": os.getloadavg()}, fh, indent=1)

    flow = train_flow(pipe, rng, args.flow_seconds, args.flow_steps, args.data, args.batch, args.lr, args.ema,
                      args.eval_every, list(range(args.eval_seeds)), on_eval=save_progress)
    final, _ = evaluate(pipe, list(range(8)))
    pipe.save_pretrained(args.out, safe_serialization=True)
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("vae", "transformer", "text_encoder", "text_encoder_2")}
    design = (f"AE {arch['vae_channels']} -> {arch['latent_channels']}x16x16, FLUX width {arch['width']} "
              f"{arch['double_layers']}+{arch['single_layers']} blocks")
    result = {"design": design, "args": vars(args), "params": params, "autoencoder": ae, "flow": flow,
              "final_alignment_8_seeds": final, "sample_steps": SAMPLE_STEPS, "wall_seconds": time.perf_counter() - t0,
              "cpu_seconds": time.process_time(), "load_before": load_before, "load_after": os.getloadavg(), "threads": args.threads,
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "image_size": SIZE}
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    if args.png:
        save_curve_png(result, args.png)
    print(f"final alignment (27 prompts x 8 seeds, {SAMPLE_STEPS} steps): {final:.3f}; "
          f"wall {result['wall_seconds']:.0f} s, load {load_before} -> {result['load_after']}")
    return result


if __name__ == "__main__":
    main()
