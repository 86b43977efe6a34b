"""rdfast's CPU scoring with and without its fused MLP activations (rdfast/cpu_fused_mlp.py), timed in alternation.

    python bench/fused_mlp.py --preset small --json bench/results/fused_mlp_small_cpu.json

The same loaded model, the same encoded items: one timing with the fused forwards, one with them removed
(``unfuse_mlps``; linears stay on oneDNN), alternated ``--repeats`` times; the median of each. Also the largest
log P(yes) difference between the two (fp32: within 1e-5 promised).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import throughput as T  # noqa: E402

from common import append_csv, environment, flat_rows, write_json  # noqa: E402
from rdfast.cpu_fused_mlp import fuse_mlp_activations, unfuse_mlps  # noqa: E402


def measure(rm, name: str, preset, repeats: int, limit: int | None = None) -> dict:
    data = T.scenario_inputs(name, preset)
    data.update({k: data[k][:limit] for k in ("images1", "images2", "prompts") if data[k] is not None})
    images = [data["images1"]] if data["images2"] is None else [data["images1"], data["images2"]]
    items = rm.encode(data["prompts"], images, preset.instruction, kind=data.get("kind", "image"))
    switch = {"fused": fuse_mlp_activations, "unfused": unfuse_mlps}
    out, times = {}, {k: [] for k in switch}
    for k, on in switch.items():  # warm-up (packs the weights) and the scores compared below
        on(rm.model)
        out[k] = T.run_rdfast(rm, items).double()
    for _ in range(repeats):
        for k, on in switch.items():
            on(rm.model)
            t0 = time.perf_counter()
            T.run_rdfast(rm, items)
            times[k].append(time.perf_counter() - t0)
    fuse_mlp_activations(rm.model)  # back to how rdfast loads it
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"scenario": name, "items": len(items), "fused_items_per_s": len(items) / med["fused"],
            "unfused_items_per_s": len(items) / med["unfused"], "speedup": med["unfused"] / med["fused"],
            "max_abs_dlogp": float((out["fused"] - out["unfused"]).abs().max()), "repeats": repeats}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(T.PRESETS))
    parser.add_argument("--scenarios", default="ref16,point64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 16 items, 1 repeat: seconds, for CI")
    parser.add_argument("--json", default=None)
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "fused_mlp.csv"))
    args = parser.parse_args(argv)
    preset = T.PRESETS["tiny" if args.smoke else args.preset]
    rm = T.load_model(argparse.Namespace(model=None, device="cpu", dtype="float32", preset=args.preset), preset)
    if not any(hasattr(m.__dict__.get("forward"), "fused") for m in rm.model.modules()):
        parser.error("the loaded model has no fused MLP (RDFAST_CPU_FAST=0, or no oneDNN ops in this torch)")
    result = {**environment(), "preset": "tiny" if args.smoke else args.preset, "dtype": "float32",
              "smoke": args.smoke, "rows": []}
    for name in args.scenarios.split(","):
        row = measure(rm, name, preset, 1 if args.smoke else args.repeats, 16 if args.smoke else None)
        result["rows"].append(row)
        print(f"{name:9s} fused {row['fused_items_per_s']:7.1f}/s  unfused {row['unfused_items_per_s']:7.1f}/s  "
              f"{row['speedup']:.3f}x  max |dlog P| {row['max_abs_dlogp']:.1e}", flush=True)
    result["load_average_end"] = environment()["load_average"]
    if args.json:
        write_json(args.json, result)
    if args.csv and not args.smoke:
        append_csv(args.csv, flat_rows(result, "rows"))
    return result


if __name__ == "__main__":
    main()
