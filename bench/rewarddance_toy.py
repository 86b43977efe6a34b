"""The RewardDance study at toy scale (issue 13, deliverable 5): generator, preference data, reward models at
three sizes x three paradigms, ReFL with each RM (and the reference ablation), Search over Paths vs Best-of-N.

Stage by stage, each cached in ``--out`` (an interrupted run continues where it stopped; a finished stage is read
back, never redone), each with its progress bar and its budget (minutes on 2 idle cores: generator 20,
preference data 5, reward models 45, ReFL 20, search 5; the seconds each stage took are recorded beside it):

    generator   rdfast.toyworld.train_generator (or ``--generator toy:generator|DIR``: taken as the result, recorded)
    data        rdfast.toyworld.preference: generator samples paired by the oracle, plus renderer pairs
    rm          rdfast.toyworld.reward_models.run (sizes x paradigms; its own cache in OUT/rm)
    base        the generator's oracle alignment: in-domain prompts x fixed seeds
    refl        per size, the pairwise RM with a Best-of-N top-2 reference; the regressive RM (size of the best
                pairwise RM) without reference; the best pairwise RM with a bottom-2 reference (rdfast.toyworld.refl_study)
    search      Search over Paths with the best pointwise verifier vs Best-of-N at equal total calls
                (rdfast.toyworld.search_study)

    python bench/rewarddance_toy.py --json bench/results/rewarddance_toy_cpu.json --out /tmp/rewarddance
    python bench/rewarddance_toy.py --smoke --json /tmp/smoke.json          # well under a minute; plumbing only

Writes the JSON (keys ``rm``, ``refl``, ``reference``, ``search``, ``base_alignment``, ``seconds``, ``stages`` and
bench/common.py's ``environment()`` fields) and PNG figures next to it (``<stem>_rm_accuracy.png``,
``<stem>_refl.png``, ``<stem>_search.png``, ``<stem>_samples_*.png``). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
from tqdm import tqdm

from common import environment, write_json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rdfast.diffusion.pipelines import load_pipeline  # noqa: E402
from rdfast.toyworld import refl_study, search_study  # noqa: E402
from rdfast.toyworld import reward_models as trm  # noqa: E402
from rdfast.toyworld.figures import verdict_grid  # noqa: E402

#: minutes per stage group on 2 idle cores (issue 13); the base alignment counts to ReFL's, as do all ReFL runs
STAGE_MINUTES = {"generator": 20, "data": 5, "rm": 45, "refl": 20, "search": 5}
BUDGETS = {
    "full": {"generator": dict(ae_seconds=240, flow_seconds=660, data=1024, batch=32, eval_every=220, eval_seeds=2,
                               arch={}),
             "rm": dict(budget="full", sizes=trm.STUDY_SIZES,
                   stages=trm.PARADIGMS + ("pairwise_from_verifier",)),  # the pairwise RM warm-started from the verifier: 0.90 vs 0.80 ID earlier
             "refl": refl_study.REFL_BUDGETS["full"], "search": search_study.SEARCH_BUDGETS["full"]},
    "smoke": {"generator": dict(ae_seconds=60, ae_steps=2, flow_seconds=60, flow_steps=2, data=8, batch=4,
                                eval_every=1e9, eval_seeds=1,
                                arch=dict(vae_channels="8,16,16", width=32, heads=2, double_layers=1, single_layers=1,
                                          text_width=16)),
              "rm": dict(budget="smoke", sizes=("small",), stages=trm.PARADIGMS),
              "refl": refl_study.REFL_BUDGETS["smoke"], "search": search_study.SEARCH_BUDGETS["smoke"]},
}


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _write(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)  # a stage killed half-way leaves no result: it runs again


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (reward-model workers run as child processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def group(stage: str) -> str:
    return "refl" if stage == "base" else stage.split("/")[0]


def stage_budgets(record: dict) -> dict:
    """Per stage group: seconds and CPU seconds as recorded when the stages ran, the budget, and whether it held."""
    out = {}
    for name, minutes in STAGE_MINUTES.items():
        rows = [v for k, v in record.items() if group(k) == name]
        seconds = round(sum(v["seconds"] for v in rows), 1)
        out[name] = {"seconds": seconds, "cpu_seconds": round(sum(v["cpu_seconds"] for v in rows), 1),
                     "budget_seconds": 60 * minutes, "within_budget": seconds <= 60 * minutes,
                     "load_max": max((v["load_after"] for v in rows), default=None)}
    return out


class Stages:
    """Run each stage once: its result is ``OUT/<name>.json`` (with the seconds it took); later calls read it."""

    def __init__(self, out, log):
        self.out, self.log, self.record = out, log, {}

    def __call__(self, name, fn):
        path = os.path.join(self.out, name + ".json")
        cached = os.path.exists(path)
        if not cached:
            print(f"== stage {name} (stage group {group(name)}: {STAGE_MINUTES[group(name)]} min on 2 idle cores)",
                  file=self.log, flush=True)
            t0, cpu0, load0 = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
            result = fn()
            result["stage"] = {"seconds": round(time.perf_counter() - t0, 1),
                               "cpu_seconds": round(cpu_seconds() - cpu0, 1),
                               "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}
            _write(path, result)
        result = _read(path)
        self.record[name] = {**result["stage"], "cached": cached}
        return result


def grid(images, prompts, path, per_prompt: int, keep: int = 2):
    """Verdict grid of the first ``keep`` samples per prompt (samples come prompt-major, ``per_prompt`` each)."""
    chosen = [k for k in range(len(prompts)) if k % per_prompt < keep]
    verdict_grid([images[k] for k in chosen], [prompts[k] for k in chosen], path, columns=9)
    return os.path.basename(path)


def generator_stage(folder, budget, threads, log):
    from rdfast.toyworld import train_generator  # heavy

    b = budget["generator"]
    argv = ["--out", os.path.join(folder, "generator"), "--json", os.path.join(folder, "generator_curve.json"),
            "--png", os.path.join(folder, "generator_curve.png"), "--threads", str(threads),
            "--ae-seconds", str(b["ae_seconds"]), "--flow-seconds", str(b["flow_seconds"]), "--data", str(b["data"]),
            "--batch", str(b["batch"]), "--eval-every", str(b["eval_every"]), "--eval-seeds", str(b["eval_seeds"])]
    argv += ["--ae-steps", str(b["ae_steps"])] if "ae_steps" in b else []
    argv += ["--flow-steps", str(b["flow_steps"])] if "flow_steps" in b else []
    for key, value in b["arch"].items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    study_threads = torch.get_num_threads()
    result = train_generator.main(argv)  # sets its own thread count: deterministic for a given count
    torch.set_num_threads(study_threads)
    return {"source": "trained (rdfast.toyworld.train_generator)", "path": os.path.join(folder, "generator"),
            "argv": argv, "final_alignment_8_seeds": result["final_alignment_8_seeds"],
            "curve": [{k: c[k] for k in ("step", "alignment")} for c in result["flow"]["curve"]]}


def data_stage(folder, generator, smoke, log):
    """The issue's preference data (rdfast.toyworld.preference: generator samples paired by the oracle, plus
    renderer pairs), built and saved in OUT/preference."""
    from rdfast.toyworld import preference  # heavy

    path = os.path.join(folder, "preference")
    data = preference.build(generator, seed=0, log=log, **(preference.SMOKE if smoke else {}))
    preference.save(data, path)
    return {"source": "rdfast.toyworld.preference (generator + renderer pairs)", "preference": path,
            "info": data.info}


def rm_stage(folder, rb, preference, workers, log):
    """reward_models.run on the preference data (sizes x stages, ``workers`` one-thread processes)."""
    return {"rows": trm.run(os.path.join(folder, "rm"), rb["sizes"], rb["stages"], trm.BUDGETS[rb["budget"]],
                            log=log, preference=preference, workers=workers), "trained_on": preference}


def best(rows, key):
    return max(rows, key=key) if rows else None


def pairwise_merit(r):
    """What ReFL needs of a pairwise RM: accuracy on generator samples first (measured when the RMs trained on
    preference data), then on renders in-domain + OOD; smaller wins ties."""
    return r.get("generator_acc") or 0.0, r["id_acc"] + r["ood_acc"], -r["params"]


def verifier_merit(r):
    return r.get("generator_auc") or 0.0, r.get("in_domain_auc") or 0.0, -r["params"]


def refl_runs(rms, budget):
    """(name, rm row, reward kind, reference) of every ReFL run: each size's best pairwise stage (top-2 reference),
    the regressive RM of the best pairwise RM's size, and the best pairwise RM with a bottom-2 reference."""
    pairwise = [r for r in rms if r["paradigm"] == "pairwise"]
    per_size = {}
    for r in pairwise:
        if r["size"] not in per_size or pairwise_merit(r) > pairwise_merit(per_size[r["size"]]):
            per_size[r["size"]] = r
    top = best(pairwise, pairwise_merit)
    runs = [(f"pairwise_{size}_top2", r, "pairwise", "top") for size, r in per_size.items()]
    regressive = [r for r in rms if r["paradigm"] == "regressive" and top and r["size"] == top["size"]]
    runs += [(f"regressive_{top['size']}", regressive[0], "regressive", None)] if regressive else []
    runs += [(f"pairwise_{top['size']}_bottom2", top, "pairwise", "bottom")] if top else []
    return runs, top


def figures(report, stem):
    """Accuracy vs RM size, alignment before/after per RM, search vs Best-of-N (PNG next to the JSON)."""
    import matplotlib  # heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy

    paths = {}

    def save(fig, name):
        fig.tight_layout()
        paths[name] = f"{stem}_{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, paradigm in enumerate(trm.PARADIGMS):
        rows = sorted((r for r in report["rm"] if r["paradigm"] == paradigm and r.get("stage", paradigm) == paradigm),
                      key=lambda r: r["params"])
        if rows:
            xs = [r["params"] / 1e6 for r in rows]
            ax.plot(xs, [r["id_acc"] for r in rows], "o-", color=f"C{i}", label=f"{paradigm} in-domain")
            ax.plot(xs, [r["ood_acc"] for r in rows], "s--", color=f"C{i}", label=f"{paradigm} OOD")
    ax.set_xscale("log")
    ax.set_xlabel("reward model parameters (M, as saved)")
    ax.set_ylabel("pairwise accuracy")
    ax.axhline(0.5, color="0.7", lw=0.8)
    ax.legend(fontsize=6)
    save(fig, "rm_accuracy")

    rows = report["refl"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["base_alignment"] for r in rows], 0.4, label="base", color="0.6")
    ax.bar([x + 0.2 for x in xs], [r["aligned_alignment"] for r in rows], 0.4, label="after ReFL", color="C0")
    ax.set_xticks(list(xs), [r["name"].replace("_", "\n", 1) for r in rows], fontsize=7)
    ax.set_ylabel("oracle alignment (in-domain)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    save(fig, "refl")

    s = report["search"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    labels = [f"search\n{s['denoiser_calls_search']}+{s['verifier_calls_search']}",
              f"Best-of-{s['bon_k']}\n{s['denoiser_calls_bon']}+{s['verifier_calls_bon']}",
              f"Best-of-{s['bon_equal_verifier_k']}\n{s['bon_equal_verifier_calls']['denoiser']}+"
              f"{s['bon_equal_verifier_calls']['verifier']}", "no search\n(base)"]
    values = [s["search_alignment"], s["bon_alignment"], s["bon_equal_verifier_alignment"], report["base_alignment"]]
    ax.bar(range(4), values, color=["C0", "C3", "C1", "0.6"])
    ax.set_xticks(range(4), labels, fontsize=7)
    ax.set_ylabel("oracle alignment of the best sample")
    ax.set_title("denoiser + verifier calls per run; Best-of-N: equal total, equal verifier calls", fontsize=7)
    ax.set_ylim(0, 1)
    save(fig, "search")
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the report (figures go next to it)")
    parser.add_argument("--out", help="stage cache (default: a temporary folder, removed after)")
    parser.add_argument("--budget", default="full", choices=sorted(BUDGETS))
    parser.add_argument("--smoke", action="store_true", help="--budget smoke: the plumbing, well under a minute")
    parser.add_argument("--generator", help="take this generator (toy:generator or a folder) as the generator "
                                            "stage's result instead of training one")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the generator stage uses 1)")
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else args.budget
    budget = BUDGETS[name]
    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="rdfast-rewarddance-")
    os.makedirs(os.path.join(out, "refl"), exist_ok=True)
    spec = os.path.join(out, "study.json")
    if os.path.exists(spec) and _read(spec) != {"budget": name, "generator": args.generator}:
        parser.error(f"--out {out} holds a run with {_read(spec)}; use a new folder")
    _write(spec, {"budget": name, "generator": args.generator})
    log, t0 = sys.stderr, time.perf_counter()
    stem = os.path.splitext(os.path.abspath(args.json))[0]
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    stage = Stages(out, log)
    bar = tqdm(total=5, desc="study stages", unit="stage", file=log)
    try:
        if args.generator:
            gen = stage("generator", lambda: {"source": f"given: {args.generator}", "path": args.generator})
        else:
            gen = stage("generator", lambda: generator_stage(out, budget, 1, log))
        bar.update()
        data = stage("data", lambda: data_stage(out, gen["path"], name == "smoke", log))
        bar.update()
        rms = stage("rm", lambda: rm_stage(out, budget["rm"], data["preference"], args.threads, log))["rows"]
        bar.update()

        def base():
            alignment, images, prompts = refl_study.oracle_alignment(
                load_pipeline(gen["path"], device="cpu"), refl_study.study_prompts(budget["refl"]),
                budget["refl"]["eval_seeds"])
            return {"base_alignment": alignment, "samples": len(prompts),
                    "grid": grid(images, prompts, os.path.join(out, "refl", "base.png"), budget["refl"]["eval_seeds"])}

        base_alignment = stage("base", base)["base_alignment"]
        runs, top = refl_runs(rms, budget["refl"])
        refl = []
        for run_name, rm_row, kind, reference in runs:
            path = os.path.join(out, "rm", rm_row["size"], rm_row.get("stage", rm_row["paradigm"]))

            def one(path=path, kind=kind, reference=reference, run_name=run_name):
                reward = (refl_study.pairwise_reward(path, budget["refl"], reference) if kind == "pairwise"
                          else refl_study.regressive_reward(path))
                r = refl_study.run_refl(gen["path"], reward, budget["refl"], base_alignment, log=log)
                images, prompts = r.pop("images"), r.pop("prompts")
                r["grid"] = grid(images, prompts, os.path.join(out, "refl", run_name + ".png"),
                                 budget["refl"]["eval_seeds"])
                return r

            r = stage("refl/" + run_name, one)
            refl.append({"name": run_name, "rm_paradigm": kind, "rm_params": rm_row["params"], "rm_size": rm_row["size"],
                         "rm_stage": rm_row.get("stage", kind), "reference": {"top": "top2", "bottom": "bottom2"}.get(reference),
                         **{k: r[k] for k in ("base_alignment", "aligned_alignment", "reward_std_last", "reward_first",
                                              "reward_last", "steps", "batch", "eval_samples", "grid")}})
        bar.update()
        verifier = best([r for r in rms if r["paradigm"] == "pointwise"], verifier_merit)

        def search():
            s = search_study.run_search(gen["path"], os.path.join(out, "rm", verifier["size"], verifier.get("stage", "pointwise")),
                                        budget["search"], log=log)
            images = s.pop("images")
            s["grids"] = {m: grid(images[m], s["prompts"], os.path.join(out, f"search_{m}.png"), budget["search"]["seeds"])
                          for m in ("search", "bon")}
            return s

        searched = stage("search", search)
        searched.update(verifier_size=verifier["size"], verifier_params=verifier["params"])
        bar.update()
        bar.close()
        by = {r["reference"]: r for r in refl if r["rm_paradigm"] == "pairwise" and top and r["rm_size"] == top["size"]}
        report = {
            **environment(),
            "rm": rms,
            "refl": refl,
            "reference": {"top2_alignment": by["top2"]["aligned_alignment"] if "top2" in by else None,
                          "bottom2_alignment": by["bottom2"]["aligned_alignment"] if "bottom2" in by else None,
                          "rm_size": top["size"] if top else None, "base_alignment": base_alignment},
            "search": {k: v for k, v in searched.items() if k not in ("stage", "prompts")},
            "base_alignment": base_alignment,
            "seconds": round(sum(s["seconds"] for s in stage.record.values()), 1),
            "invocation_seconds": round(time.perf_counter() - t0, 1),
            "stages": stage.record,
            "stage_budgets": stage_budgets(stage.record),
            "generator": {k: v for k, v in gen.items() if k != "stage"},
            "data": {k: v for k, v in data.items() if k != "stage"},
            "budget": name, "budgets": {k: v for k, v in budget.items()},
            "note": "seconds: the sum of every stage's own seconds as recorded when it ran (cached stages keep theirs)",
        }
        report["figures"] = figures(report, stem)
        for name_, src in [("base", os.path.join(out, "refl", "base.png"))] + \
                [(r["name"], os.path.join(out, "refl", r["grid"])) for r in refl] + \
                [(f"search_{m}", os.path.join(out, g)) for m, g in searched["grids"].items()]:
            dest = f"{stem}_samples_{name_}.png"
            shutil.copyfile(src, dest)
            report["figures"][f"samples_{name_}"] = dest
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    write_json(args.json, report, indent=1)
    print(f"\nbase alignment {base_alignment:.3f}")
    for r in refl:
        print(f"ReFL {r['name']:<28} params {r['rm_params']:>8}: {r['base_alignment']:.3f} -> {r['aligned_alignment']:.3f}"
              f" (reward {r['reward_first']:.3f} -> {r['reward_last']:.3f}, std last {r['reward_std_last']:.3f})")
    s = report["search"]
    print(f"search {s['search_alignment']:.3f} ({s['denoiser_calls_search']}+{s['verifier_calls_search']} calls) vs "
          f"Best-of-{s['bon_k']} {s['bon_alignment']:.3f} ({s['denoiser_calls_bon']}+{s['verifier_calls_bon']}); "
          f"stages {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
