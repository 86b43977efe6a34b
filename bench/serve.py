"""Reward serving under GRPO-shaped traffic: ``rdfast serve`` with cross-request batching, the same server with
batching off (``--max-batch 1``) and in-process ``rm.compare`` of whole groups, measured in one run on the same items.

    python bench/serve.py --json out.json                          # the `small` preset (bench/throughput.py)
    python bench/serve.py --preset tiny --concurrency 1,2 --groups 1 --group-size 4    # a smoke

Traffic: groups of ``--group-size`` (16) candidates that share a prompt and a reference image; each request is one
candidate, ``POST /v1/compare`` with images1 = [the reference], images2 = [the candidate] (``--endpoint score``:
``POST /v1/score`` of the candidate alone). N client threads in a separate process (loopback only) send the
requests of ``--groups`` groups in group order, each request once. The server runs in a subprocess on the same
machine, so clients and server share its cores (the client's CPU time is reported). The in-process baseline
scores each group in one call from decoded images; the server also decodes the PNG bodies. Rows: items/s,
p50/p99 latency (per request; in process per group call), and the mean items per engine call (from /metrics).
``--threads N`` gives the in-process model and each server N torch threads.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("batched", "unbatched")


# ---- the workload ---------------------------------------------------------------------------------------------
def workload(args, preset):
    """(groups, bodies): groups = [(prompt, reference, candidates)], bodies = one JSON body per request, in order."""
    from throughput import make_prompts  # heavy (torch): not in the client process

    from rdfast.testing import random_images

    size = (preset.image_size,)
    refs = random_images(args.groups, sizes=size, seed=1)
    cands = random_images(args.groups * args.group_size, sizes=size, seed=2)
    prompts = make_prompts(args.groups, preset.prompt_words, seed=3)
    groups = [(prompts[g], refs[g], cands[g * args.group_size : (g + 1) * args.group_size]) for g in range(args.groups)]
    bodies = []
    for prompt, ref, members in groups:
        ref64 = png_b64(ref)
        for cand in members:
            body = ({"images1": [ref64], "images2": [png_b64(cand)]} if args.endpoint == "compare"
                    else {"images": [png_b64(cand)]})
            body.update(prompts=[prompt], instruction=preset.instruction)
            bodies.append(json.dumps(body).encode())
    return groups, bodies


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---- the client process ---------------------------------------------------------------------------------------
def client(url: str, warmup: list[bytes], bodies: list[bytes], concurrency: int, conn) -> None:
    """Send ``warmup``, wait for the go on ``conn``, then every body once from ``concurrency`` threads; report
    (scores, latencies, wall s, CPU s) on ``conn``."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def post(body: bytes):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        t0 = time.perf_counter()
        answer = local.session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=600)
        latency = time.perf_counter() - t0
        answer.raise_for_status()
        return answer.json()["scores"][0], latency

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, warmup))
        conn.send("warm")
        conn.recv()
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = list(pool.map(post, bodies))
    conn.send(([s for s, _ in results], [lat for _, lat in results], time.perf_counter() - t0,
               time.process_time() - cpu0))
    conn.close()


def run_clients(url: str, bodies: list[bytes], concurrency: int, before=None):
    """Warm up with ``2 * concurrency`` requests, call ``before()`` (e.g. read counters), then time ``bodies``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch, no model
    parent, child = ctx.Pipe()
    warmup = bodies[: min(len(bodies), 2 * concurrency)]
    proc = ctx.Process(target=client, args=(url, warmup, bodies, concurrency, child))
    proc.start()
    child.close()
    parent.recv()
    state = before() if before else None
    parent.send("go")
    result = parent.recv()
    proc.join()
    return result, state


# ---- the server subprocess ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``rdfast serve`` in a subprocess on a free loopback port, stopped with SIGTERM."""

    def __init__(self, model: str, device: str, max_batch: int, max_wait_ms: float, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH")))))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, as the in-process run uses
        self.log = tempfile.TemporaryFile()  # not a pipe: a full pipe would block the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rdfast.cli", "serve", "--model", model, "--port", str(self.port), "--device",
             device, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue-size", "1024"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self) -> None:
        """Return once /health answers (the model is loaded)."""
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start within 300 s")
            time.sleep(0.2)

    def batch_stats(self) -> tuple[float, float]:
        """(items, engine calls) counted so far, from /metrics."""
        text = requests.get(self.url + "/metrics", timeout=30).text
        get = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
        return get("rdfast_batch_items_sum"), get("rdfast_batch_items_count")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---- measurements ---------------------------------------------------------------------------------------------
def measure_server(server: Server, endpoint: str, bodies: list[bytes], concurrency: int,
                   mode: str) -> tuple[dict, list]:
    url = f"{server.url}/v1/{endpoint}"
    (scores, latencies, wall, cpu), (items0, calls0) = run_clients(url, bodies, concurrency, server.batch_stats)
    items1, calls1 = server.batch_stats()
    row = {"mode": mode, "concurrency": concurrency, "items": len(bodies), "items_per_s": len(bodies) / wall,
           "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
           "client_cpu_s": cpu, "client_cpu_ms_per_item": 1000 * cpu / len(bodies),
           "mean_items_per_engine_call": (items1 - items0) / max(1.0, calls1 - calls0)}
    return row, scores


def measure_in_process(rm, groups, endpoint: str, instruction) -> tuple[dict, list]:
    import torch

    def call(prompt, ref, members):
        with torch.inference_mode():
            if endpoint == "compare":
                return rm.compare(images1=[ref] * len(members), images2=members, prompts=[prompt] * len(members),
                                  instruction=instruction)
            return rm.score(images=members, prompts=[prompt] * len(members), instruction=instruction)

    call(*groups[0])  # warm-up
    scores, latencies = [], []
    t0 = time.perf_counter()
    for group in groups:
        g0 = time.perf_counter()
        scores += call(*group).tolist()
        latencies.append(time.perf_counter() - g0)
    wall = time.perf_counter() - t0
    n = len(scores)
    row = {"mode": "in_process", "concurrency": 1, "items": n, "items_per_s": n / wall,
           "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
           "items_per_call": len(groups[0][2])}
    return row, scores


def median_row(repeats: list[dict]) -> dict:
    """The repeat with the median items/s, with every repeat's items/s."""
    ordered = sorted(repeats, key=lambda r: r["items_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "items_per_s_repeats": [r["items_per_s"] for r in repeats]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--endpoint", default="compare", choices=("compare", "score"))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--groups", type=int, default=4, help="GRPO groups per measurement")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched server's --max-wait-ms")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of every measurement (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the in-process model and of each server (0: torch's default); on a "
                             "loaded machine 1 avoids threads waiting on each other's descheduled cores")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from throughput import PRESETS

    from common import load_average, machine, write_json
    from rdfast import RewardModel
    from rdfast.testing import tiny_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    model = str(tiny_checkpoint(preset.family, **preset.overrides))
    groups, bodies = workload(args, preset)
    load_before = load_average()
    rm = RewardModel.from_pretrained(model, device=args.device)
    levels = [int(c) for c in args.concurrency.split(",")]
    # both servers stay up (idle between runs) and every measurement is repeated in alternation, so that load from
    # other jobs on the machine falls on every mode alike; each row keeps the median of its repeats
    servers = {}
    try:
        for mode in MODES:
            servers[mode] = Server(model, args.device, 64 if mode == "batched" else 1, args.max_wait_ms,
                                   args.threads)
        for server in servers.values():  # both load at once
            server.wait_ready()
        runs, worst = {}, 0.0
        for _ in range(args.repeats):
            row, want = measure_in_process(rm, groups, args.endpoint, preset.instruction)
            runs.setdefault(("in_process", 1), []).append(row)
            for concurrency in levels:
                for mode, server in servers.items():
                    row, got = measure_server(server, args.endpoint, bodies, concurrency, mode)
                    worst = max(worst, float((torch.tensor(got).log() - torch.tensor(want).log()).abs().max()))
                    runs.setdefault((mode, concurrency), []).append(row)
    finally:
        for server in servers.values():
            server.stop()
    rows = [median_row(repeats) for repeats in runs.values()]
    result = {"device": machine(args.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "preset": args.preset,
              "endpoint": args.endpoint, "groups": args.groups, "group_size": args.group_size,
              "max_wait_ms": args.max_wait_ms, "repeats": args.repeats, "load_average": load_before,
              "load_average_after": load_average(),
              "max_abs_logp_diff_vs_in_process": worst, "rows": rows}
    top = max(levels)
    rate = {r["mode"]: r["items_per_s"] for r in rows if r["mode"] == "in_process" or r["concurrency"] == top}
    result["batched_vs_in_process"] = rate["batched"] / rate["in_process"]
    result["batched_vs_unbatched"] = rate["batched"] / rate["unbatched"]
    print(f"{'mode':11s} {'conc':>4s} {'items/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'items/call':>10s} "
          f"{'client cpu ms/item':>18s}")
    for r in rows:
        per_call = r.get("mean_items_per_engine_call", r.get("items_per_call"))
        print(f"{r['mode']:11s} {r['concurrency']:4d} {r['items_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{per_call:10.1f} {r.get('client_cpu_ms_per_item', float('nan')):18.2f}")
    print(f"at concurrency {top}: batched/in-process {result['batched_vs_in_process']:.2f}x, batched/unbatched "
          f"{result['batched_vs_unbatched']:.2f}x; max |log P diff| vs in process {worst:.2e}; load {load_before}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
