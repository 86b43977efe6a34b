"""Peak memory of one ReFL step: rdfast's memory-efficient path against the naive path and diffusers' own
gradient checkpointing.

All paths run the same ReFL step (same pipeline, seed, stop step, K gradient steps, float32, VAE tiling off)
on a FLUX-shaped pipeline sized so activations dominate (256x256 images, a four-block VAE with 64 channels,
eight transformer blocks of width 128; rdfast.diffusion.testing "bench"), with the tiny Qwen2-VL reward model
as the pairwise reward against a Best-of-2 reference:
    naive:     no activation checkpointing anywhere (denoiser, VAE decode, reward model store everything);
    diffusers: what a user of diffusers would switch on: ``enable_gradient_checkpointing()`` on the denoiser and
               on the VAE (per-block checkpoints; Wan's VAE does not support it, recorded as
               ``vae_checkpointing: false``), the reward model as in naive;
    rdfast:    ReFLTrainer(memory_efficient=True): checkpointed denoiser blocks, VAE decode (one sample and one
               resnet at a time) and reward model.

Each path runs in a fresh subprocess (no allocator state shared), which loads everything, builds the
references and takes one warm-up step (lazy initialisations, oneDNN caches), frees the gradients and then
measures one step (loss + backward) above that post-load baseline:

* CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before the step.
* CPU (primary figure): a tensor-tracking allocator view. A TorchDispatchMode sees every tensor an operator
  returns (forward, backward and checkpoint recomputation alike), records each new storage's bytes and
  drops them when the storage is freed (a weakref finalizer; PyTorch keeps one Python object per storage).
  The peak of that running sum is the peak of tensor bytes allocated by the step and alive at once: exact,
  and free of allocator caching and fragmentation.
* CPU (reported beside it): peak RSS above the RSS before the step (VmHWM after resetting it through
  /proc/self/clear_refs), with glibc's mmap threshold pinned at 64 KiB so freed tensors leave RSS. It adds
  allocator and library overheads, so it is a looser upper bound.

The gradients of every path are saved and compared with the naive path's: ``grad_cosine`` must be ~1 (same
step, same maths). Time: wall seconds and process CPU seconds of the measured step (with ``--threads 1`` the CPU
seconds give ratios that load on other cores cannot distort). The result is bench/common.py's schema
(``environment()`` merged in, one row per path under "rows", ratios against naive and against diffusers), its rows
appended to bench/results/refl_memory.csv.

``--pipeline wan``: the same comparison for video ReFL on a Wan 2.1-shaped pipeline ("bench": 64 px, 17 frames =
5 latent frames, Wan's VAE channel multipliers at base width 16), where rdfast decodes with one checkpoint per
latent frame and the reward model judges the videos against a Best-of-2 video reference.

    python bench/refl_memory.py --json bench/results/refl_memory_cpu.json   # default: about 1-2 min on 2 cores
    python bench/refl_memory.py --size tiny --json /tmp/refl.json            # half a minute
    python bench/refl_memory.py --smoke --csv '' --json /tmp/refl.json       # seconds: 32 px, 4 steps
    python bench/refl_memory.py --size gpu --device cuda --json bench/results/refl_memory_<gpu>.json
    python bench/refl_memory.py --pipeline wan --json bench/results/refl_memory_wan_cpu.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref

import torch

from common import append_csv, environment, flat_rows, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PROMPTS = ["a red fox in the snow", "a blue car on a long street"]
PATHS = ("naive", "diffusers", "rdfast")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "refl_memory.csv")


# ---- measuring ------------------------------------------------------------------------------------------
class TensorPeak:
    """Context manager: peak bytes of tensor storages created inside it and alive at the same time (CPU/GPU)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        tracker._track(t)
                return out

        self._mode = _Mode()
        self.live, self.current, self.peak = {}, 0, 0

    def _track(self, t):
        st = t.untyped_storage()
        key = (st.device, st.data_ptr())
        if not key[1] or key in self.live:  # views and in-place results share a known storage
            return
        n = st.nbytes()
        self.live[key] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, key)

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def _status(key):
    with open("/proc/self/status") as fh:
        return int(re.search(key + r":\s+(\d+)", fh.read()).group(1)) * 1024


# ---- one path, in its own process ---------------------------------------------------------------------------
def child(args):
    from rdfast import RewardModel
    from rdfast.diffusion.refl import ReFLTrainer
    from rdfast.diffusion.reward import PairwiseReward
    from rdfast.diffusion.testing import DEFAULT_FRAMES, DEFAULT_SIDE, tiny_pipeline
    from rdfast.testing import tiny_checkpoint

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    side = DEFAULT_SIDE[(args.pipeline, args.size)]
    pipe = tiny_pipeline(args.pipeline, args.size, device=device)
    rm = RewardModel.from_pretrained(tiny_checkpoint("qwen2_vl"), device=device, dtype=torch.float32)
    trainer = ReFLTrainer(pipe, PairwiseReward(rm, n=2, top_k=1), height=side, width=side,
                          num_steps=args.num_steps, grad_steps=args.grad_steps, late_range=(0.5, 1.0),
                          lora_rank=8, memory_efficient=args.path == "rdfast", tile_vae=False, autocast=None,
                          graphs=False, seed=args.seed, num_frames=DEFAULT_FRAMES.get((args.pipeline, args.size)))
    vae_checkpointing = args.path == "rdfast"
    if args.path == "diffusers":  # diffusers' own checkpointing, kept on (trainer.loss would switch it off)
        model = trainer.wrapper.model
        model.enable_gradient_checkpointing()
        trainer.wrapper.set_gradient_checkpointing = lambda enabled: model.enable_gradient_checkpointing()
        try:
            trainer.wrapper.vae.enable_gradient_checkpointing()
            vae_checkpointing = True
        except ValueError:  # "does not support gradient checkpointing" (Wan's VAE)
            vae_checkpointing = False
    with torch.random.fork_rng(devices=[]):  # nonzero LoRA B, so every LoRA tensor has a gradient to compare
        torch.manual_seed(args.seed)
        for n, p in trainer.wrapper.model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    prompts = PROMPTS[: args.batch] + PROMPTS[: max(0, args.batch - len(PROMPTS))]
    trainer.prepare_references(prompts, progress=False)

    def step():
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.generator.manual_seed(args.seed + 1)  # the same noise and stop step in both paths
        loss, info = trainer.loss(prompts)
        loss.backward()
        return info

    step()  # warm-up: lazy initialisations and library caches stay out of the measured step
    trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    with TensorPeak() as tracked:
        info = step()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if cuda:
        torch.cuda.synchronize()
        peak, rss = torch.cuda.max_memory_allocated() - base, None
    else:
        peak, rss = tracked.peak, max(0, _status("VmHWM") - base)
    grads = torch.cat([p.grad.detach().double().flatten().cpu() for p in trainer.parameters])
    torch.save(grads, args.grads_out)
    out = {"path": args.path, "peak_bytes": int(peak), "tracked_peak_bytes": int(tracked.peak),
           "rss_peak_bytes": rss, "step_seconds": seconds, "step_cpu_seconds": cpu_seconds,
           "vae_checkpointing": vae_checkpointing, "stop_step": info["stop_step"], "reward": info["reward"],
           "params": sum(p.numel() for p in trainer.wrapper.model.parameters()),
           "num_frames": getattr(trainer.wrapper, "num_frames", None),
           "trainable": sum(p.numel() for p in trainer.parameters)}
    with open(args.result_out, "w") as fh:
        json.dump(out, fh)


# ---- the comparison ----------------------------------------------------------------------------------------
def run(size="bench", batch=2, grad_steps=2, num_steps=8, seed=0, device=None, threads=1, log=sys.stdout,
        pipeline="flux") -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in PATHS:
            res, gr = os.path.join(tmp, f"{path}.json"), os.path.join(tmp, f"{path}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--pipeline", pipeline,
                   "--size", size, "--batch", str(batch),
                   "--grad-steps", str(grad_steps), "--num-steps", str(num_steps), "--seed", str(seed),
                   "--device", device, "--threads", str(threads), "--result-out", res, "--grads-out", gr]
            t0 = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{path} path failed:\n{proc.stderr[-4000:]}")
            with open(res) as fh:
                results[path] = json.load(fh)
            results[path]["process_seconds"] = time.time() - t0
            grads[path] = torch.load(gr)
    cosine = {p: torch.nn.functional.cosine_similarity(grads["naive"], grads[p], dim=0).item() for p in PATHS}
    naive, diff, ours = (results[p] for p in PATHS)

    def ratio(a, b, key):
        return a[key] / b[key] if a[key] is not None and b[key] else None

    rows = [{"path": p, "peak_bytes": r["peak_bytes"], "rss_peak_bytes": r["rss_peak_bytes"],
             "step_seconds": r["step_seconds"], "step_cpu_seconds": r["step_cpu_seconds"],
             "vae_checkpointing": r["vae_checkpointing"], "grad_cosine_vs_naive": cosine[p],
             "peak_ratio_vs_naive": ratio(r, naive, "peak_bytes"), "peak_ratio_vs_diffusers": ratio(r, diff, "peak_bytes"),
             "cpu_time_ratio_vs_naive": ratio(r, naive, "step_cpu_seconds"),
             "cpu_time_ratio_vs_diffusers": ratio(r, diff, "step_cpu_seconds"),
             "wall_time_ratio_vs_naive": ratio(r, naive, "step_seconds")} for p, r in results.items()]
    out = dict(environment(torch.device(device)))
    out.update({
        "naive_peak_bytes": naive["peak_bytes"], "rdfast_peak_bytes": ours["peak_bytes"],
        "diffusers_peak_bytes": diff["peak_bytes"],
        "peak_ratio": ours["peak_bytes"] / naive["peak_bytes"], "grad_cosine": cosine["rdfast"],
        "peak_ratio_vs_diffusers": ours["peak_bytes"] / diff["peak_bytes"],
        "diffusers_peak_ratio": diff["peak_bytes"] / naive["peak_bytes"], "diffusers_grad_cosine": cosine["diffusers"],
        "naive_rss_peak_bytes": naive["rss_peak_bytes"], "rdfast_rss_peak_bytes": ours["rss_peak_bytes"],
        "diffusers_rss_peak_bytes": diff["rss_peak_bytes"],
        "rss_peak_ratio": ratio(ours, naive, "rss_peak_bytes"),
        "naive_step_seconds": naive["step_seconds"], "rdfast_step_seconds": ours["step_seconds"],
        "diffusers_step_seconds": diff["step_seconds"],
        "cpu_time_ratio": ratio(ours, naive, "step_cpu_seconds"),
        "cpu_time_ratio_vs_diffusers": ratio(ours, diff, "step_cpu_seconds"),
        "device": out["machine"], "torch": torch.__version__,
        "method": ("cuda max_memory_allocated above the pre-step baseline" if device == "cuda" else
                   "tracked tensor storages (TorchDispatchMode) alive at once during the step, above the post-load "
                   "baseline; RSS VmHWM above the pre-step RSS reported as rss_peak_bytes"),
        "setup": {"pipeline": f"random {'Wan 2.1' if pipeline == 'wan' else 'FLUX'} ({size})",
                  "image_side": _side(pipeline, size), "num_frames": naive["num_frames"], "batch": batch,
                  "grad_steps": grad_steps, "num_steps": num_steps, "seed": seed, "dtype": "float32",
                  "vae_tiling": False, "lora_rank": 8, "threads": threads,
                  "reward": "tiny Qwen2-VL pairwise, Best-of-2 reference",
                  "denoiser_params": naive["params"], "trainable_params": naive["trainable"],
                  "stop_step": [r["stop_step"] for r in results.values()]},
        "rows": rows,
    })
    mb = 1 / 2**20
    print(f"{'path':10} {'peak MiB':>10} {'RSS peak MiB':>13} {'step s':>8} {'cpu s':>8} {'peak/naive':>10} "
          f"{'cpu/naive':>9} {'grad cos':>10}", file=log)
    for r in rows:
        rss = f"{r['rss_peak_bytes'] * mb:13.1f}" if r["rss_peak_bytes"] is not None else f"{'-':>13}"
        print(f"{r['path']:10} {r['peak_bytes'] * mb:10.1f} {rss} {r['step_seconds']:8.2f} {r['step_cpu_seconds']:8.2f} "
              f"{r['peak_ratio_vs_naive']:10.3f} {r['cpu_time_ratio_vs_naive']:9.3f} {r['grad_cosine_vs_naive']:10.7f}",
              file=log)
    print(f"rdfast / diffusers: peak {out['peak_ratio_vs_diffusers']:.3f}, cpu time "
          f"{out['cpu_time_ratio_vs_diffusers']:.3f}  ({out['machine']}, load {out['load_average']})", file=log)
    return out


def _side(pipeline, size):
    from rdfast.diffusion.testing import DEFAULT_SIDE

    return DEFAULT_SIDE.get((pipeline, size))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--csv", default=RESULTS, help="append one row per path here ('' to skip)")
    p.add_argument("--smoke", action="store_true", help="seconds: the tiny pipeline at 32 px, 4 steps, batch 1")
    p.add_argument("--size", default="bench", choices=("bench", "tiny", "gpu"),
                   help="bench: 256 px FLUX-like (CPU default); gpu: FLUX-shaped blocks at 512 px (~0.9 B params)")
    p.add_argument("--pipeline", default="flux", choices=("flux", "wan"),
                   help="flux: images; wan: Wan 2.1-shaped video ReFL (frame-wise checkpointed VAE decode)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grad-steps", type=int, default=2)
    p.add_argument("--num-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (1: robust on a shared, busy CPU; memory does not depend on it)")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--result-out", help=argparse.SUPPRESS)
    p.add_argument("--grads-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.path = args.child
        args.device = args.device or "cpu"
        return child(args)
    if args.pipeline == "wan" and args.size == "gpu":
        p.error("--size gpu exists for --pipeline flux only")
    if args.smoke:
        args.size, args.batch, args.num_steps = "tiny", 1, 4
    torch.set_num_threads(args.threads)  # the children's thread count, so the recorded environment says it
    out = run(args.size, args.batch, args.grad_steps, args.num_steps, args.seed, args.device, args.threads,
              pipeline=args.pipeline)
    if args.json:
        write_json(args.json, out)
    if args.csv:
        append_csv(args.csv, flat_rows(out, "rows"))
    return out


if __name__ == "__main__":
    main()
