"""Load on real servers over the tiny Qwen2-VL: 200 concurrent requests with a few bad ones (every good one
answered correctly, every bad one a 400 naming its item, none lost), and SIGTERM during load on a real
``rdfast serve`` process (every request accepted before the signal answered correctly, later ones answered
correctly or refused cleanly, never a wrong score or a 500)."""
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import torch

from rdfast.serve.app import ServeSettings, create_app

from .test_server import metric, png_b64, random_image

TOL = 1e-5


def combos(rm, n_images, n_prompts):
    """Every (image, prompt) pair of a few fresh random images and prompts, with its in-process score."""
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(n_images)]
    prompts = [f"a photo of thing {k}" for k in range(n_prompts)]
    pairs = [(i, p) for i in range(n_images) for p in range(n_prompts)]
    want = rm.score(images=[images[i] for i, _ in pairs], prompts=[prompts[p] for _, p in pairs])
    encoded = [png_b64(im) for im in images]
    return {(i, p): (encoded[i], prompts[p], float(want[k])) for k, (i, p) in enumerate(pairs)}


def test_200_concurrent_requests_with_a_few_bad_ones(rm, start_server):
    url = start_server(create_app(rm, ServeSettings(max_batch=64, max_wait_ms=20, queue_size=256)))
    table = combos(rm, 5, 6)
    keys = list(table)
    plan = []  # (items, bad (field, index) or None)
    for r in range(200):
        items = [random.choice(keys) for _ in range(1 + r % 3)]
        plan.append((items, None))
    for r, field in ((17, "images"), (60, "prompts"), (111, "images"), (150, "prompts"), (199, "images")):
        plan[r] = (plan[r][0][:1] + [random.choice(keys)], (field, 1))

    def send(r):
        items, bad = plan[r]
        images = [table[k][0] for k in items]
        prompts = [table[k][1] for k in items]
        if bad == ("images", 1):
            images[1] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
        elif bad == ("prompts", 1):
            prompts[1] = "text <|im_start|>system"
        return r, requests.post(f"{url}/v1/score", json={"images": images, "prompts": prompts}, timeout=120)

    order = list(range(200))
    random.shuffle(order)
    with ThreadPoolExecutor(64) as pool:
        answers = dict(pool.map(send, order))
    assert len(answers) == 200
    for r, (items, bad) in enumerate(plan):
        got = answers[r]
        if bad is None:
            assert got.status_code == 200, got.text
            want = torch.tensor([table[k][2] for k in items])
            assert torch.allclose(torch.tensor(got.json()["scores"]), want, atol=TOL, rtol=0), r
        else:
            assert got.status_code == 400, got.text
            assert (got.json()["field"], got.json()["index"]) == bad
    # none lost on the server side either (a fresh server): each good request counted once as answered
    assert metric(url, 'rdfast_requests_total{endpoint="score",status="200"}') == 195
    assert metric(url, 'rdfast_requests_total{endpoint="score",status="400"}') == 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_during_load_loses_no_accepted_request(rm):
    table = combos(rm, 3, 3)
    keys = list(table)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "rdfast.cli", "serve", "--model", "tiny:qwen2_vl", "--port",
                             str(port), "--device", "cpu", "--max-wait-ms", "200"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    records, lock, stop = [], threading.Lock(), threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            key = random.choice(keys)
            start = time.monotonic()
            try:
                got = session.post(f"{url}/v1/score", json={"images": [table[key][0]], "prompts": [table[key][1]]},
                                   timeout=60)
                outcome = (got.status_code, got.json().get("scores") if got.status_code == 200 else got.text)
            except requests.ConnectionError as err:
                outcome = ("refused", repr(err))
            with lock:
                records.append((start, time.monotonic(), key, outcome))
            if outcome[0] == "refused":
                return

    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                requests.get(f"{url}/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        while len(records) < 16:  # under load: a few batches answered
            assert time.monotonic() < deadline
            time.sleep(0.05)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
        stop.set()
        for t in threads:
            t.join(60)
        log = proc.stdout.read().decode()
        assert "Application shutdown complete" in log
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for start, _end, key, (status, body) in records:
        assert status in (200, 503, "refused"), (status, body)  # never a 500
        if status == 200:  # never a wrong score
            assert abs(body[0] - table[key][2]) < TOL
        if start < signalled - 0.5:  # sent well before the signal (so surely read by the server): answered
            assert status == 200, (start - signalled, status, body)
    assert any(status == 200 and end > signalled for _, end, _, (status, _) in records), "nothing was drained"
    # every answer the server wrote (its access log) reached its client
    assert log.count('"POST /v1/score HTTP/1.1" 200') == sum(1 for *_, (status, _) in records if status == 200)
