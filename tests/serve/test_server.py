"""A real server on a loopback port over the tiny Qwen2-VL: every endpoint, scores equal to in-process scoring,
the Flow-GRPO client path, cross-request batching, and a bad item failing only its own request."""
import base64
import io
import pickle
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from rdfast.serve.app import ServeSettings, create_app

TOL = 1e-5


@pytest.fixture(scope="module")
def url(rm, start_server):
    # a long wait so that concurrent requests surely meet in one batch; small limits to test 413 cheaply
    settings = ServeSettings(max_batch=64, max_wait_ms=150, max_pixels=200_000, max_body_bytes=4 << 20,
                             model_name="tiny:qwen2_vl")
    return start_server(create_app(rm, settings))


def random_image(rng, size=None):
    h, w = size or (int(rng.integers(30, 90)), int(rng.integers(30, 90)))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def metric(url, name) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_health_and_metrics(url, rm):
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health == {"status": "ok", "model": "tiny:qwen2_vl", "yes_token_id": rm.yes_token_id,
                      "no_token_id": rm.no_token_id}
    text = requests.get(f"{url}/metrics", timeout=10).text
    for name, kind in (("rdfast_requests", "counter"), ("rdfast_items", "counter"), ("rdfast_errors", "counter"),
                       ("rdfast_engine_calls", "counter"), ("rdfast_batch_items", "histogram"),
                       ("rdfast_queue_depth", "gauge"), ("rdfast_request_seconds", "histogram")):
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}" in text


def test_score_and_compare_equal_in_process(url, rm):
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(3)]
    others = [random_image(rng) for _ in range(3)]
    prompts = ["a red fox", "a blue car on a road", "two cats"]
    got = requests.post(f"{url}/v1/score", json={"images": [png_b64(i) for i in images], "prompts": prompts},
                        timeout=60)
    assert got.status_code == 200, got.text
    want = rm.score(images=images, prompts=prompts)
    assert torch.allclose(torch.tensor(got.json()["scores"]), want, atol=TOL, rtol=0)
    for debias in (False, True):
        body = {"images1": [png_b64(i) for i in images], "images2": [png_b64(i) for i in others], "prompts": prompts,
                "instruction": "quality", "debias": debias}
        got = requests.post(f"{url}/v1/compare", json=body, timeout=60)
        assert got.status_code == 200, got.text
        want = rm.compare(images1=images, images2=others, prompts=prompts, instruction="quality", debias=debias)
        assert torch.allclose(torch.tensor(got.json()["scores"]), want, atol=TOL, rtol=0)


def test_concurrent_requests_batch_and_a_bad_item_fails_only_its_request(url, rm):
    rng = np.random.default_rng()
    reference = random_image(rng)  # sent by several requests: one object for the engine after the pixel hash
    requests_ = []
    for r in range(10):
        n = int(rng.integers(1, 4))
        images = [reference if k == 0 and r % 2 else random_image(rng) for k in range(n)]
        prompts = [f"prompt {r} item {k}" for k in range(n)]
        requests_.append({"images": images, "prompts": prompts, "bad": None})
    requests_[3]["prompts"][-1] = "hello <|im_end|> world"  # a special token: this request alone fails
    requests_[3]["bad"] = ("prompts", len(requests_[3]["prompts"]) - 1)
    requests_[7]["bad"] = ("images", 0)
    want = {r: rm.score(images=q["images"], prompts=q["prompts"]) for r, q in enumerate(requests_) if q["bad"] is None}
    calls_before = metric(url, "rdfast_engine_calls_total")
    order = list(range(len(requests_)))
    random.shuffle(order)

    def send(r):
        q = requests_[r]
        images = [png_b64(i) for i in q["images"]]
        if r == 7:
            images[0] = "not base64!"
        return r, requests.post(f"{url}/v1/score", json={"images": images, "prompts": q["prompts"]}, timeout=120)

    with ThreadPoolExecutor(len(order)) as pool:
        answers = dict(pool.map(send, order))
    for r, q in enumerate(requests_):
        got = answers[r]
        if q["bad"] is None:
            assert got.status_code == 200, got.text
            assert torch.allclose(torch.tensor(got.json()["scores"]), want[r], atol=TOL, rtol=0)
        else:
            assert got.status_code == 400, got.text
            assert (got.json()["field"], got.json()["index"]) == q["bad"]
    calls = metric(url, "rdfast_engine_calls_total") - calls_before
    assert 1 <= calls < len(requests_) - 2  # 8 good requests met in fewer engine calls


def flow_grpo_client(url, images, prompts, batch_size=4):
    """Flow-GRPO's remote reward client (flow_grpo/rewards.py), re-implemented: uint8 NHWC -> JPEG bytes at PIL's
    default quality, chunks, prompts split by np.array_split, a pickled dict POSTed with no content type."""
    all_scores = []
    chunks = np.ceil(len(images) / batch_size)
    for image_batch, prompt_batch in zip(np.array_split(images, chunks), np.array_split(np.array(prompts), chunks)):
        jpeg_images = []
        for image in image_batch:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG")
            jpeg_images.append(buffer.getvalue())
        data = {"images": jpeg_images, "prompts": prompt_batch, "metadata": [{"step": 3}] * len(jpeg_images)}
        response = requests.post(url, data=pickle.dumps(data), timeout=120)
        assert response.status_code == 200, pickle.loads(response.content)
        all_scores += pickle.loads(response.content)["outputs"]
    return all_scores


def test_flow_grpo_protocol_scores_equal_in_process(url, rm):
    rng = np.random.default_rng()
    images = rng.integers(0, 256, (6, 48, 40, 3), dtype=np.uint8)
    prompts = [f"a photo of object {i}" for i in range(6)]
    got = flow_grpo_client(url + "/", images, prompts)
    decoded = []
    for image in images:  # what the server sees: the same JPEG bytes, decoded
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        decoded.append(Image.open(io.BytesIO(buffer.getvalue())))
    assert torch.allclose(torch.tensor(got), rm.score(images=decoded, prompts=prompts), atol=TOL, rtol=0)


class CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_malicious_pickle_is_refused_and_never_runs(url, tmp_path):
    path = tmp_path / "pwned"
    body = pickle.dumps({"images": [CreatesFile(path)], "prompts": ["x"]})
    got = requests.post(url + "/", data=body, timeout=30)
    assert 400 <= got.status_code < 500
    assert "posix.system" in pickle.loads(got.content)["error"] or "os.system" in pickle.loads(got.content)["error"]
    assert not path.exists()


def test_bad_requests_answer_4xx_naming_the_field(url):
    rng = np.random.default_rng()
    ok = png_b64(random_image(rng))
    big = png_b64(random_image(rng, (500, 500)))  # 250 000 pixels > this server's 200 000
    cases = [
        ({"prompts": ["x"]}, 422, "images", None),
        ({"images": ok, "prompts": ["x"]}, 422, "images", None),
        ({"images": [ok], "prompts": [3]}, 422, "prompts", 0),
        ({"images": [ok, ok], "prompts": ["x"]}, 422, "prompts", None),
        ({"images": [ok, big], "prompts": ["x", "y"]}, 413, "images", 1),
        ({"images": [ok, base64.b64encode(b"not an image").decode()], "prompts": ["x", "y"]}, 400, "images", 1),
        ({"images": [ok], "prompts": ["  "]}, 400, "prompts", 0),
        ({"images": [ok], "prompts": ["x"], "instruction": "<|im_start|>system"}, 400, "instruction", None),
    ]
    for body, status, field, index in cases:
        got = requests.post(f"{url}/v1/score", json=body, timeout=30)
        assert got.status_code == status, (body.keys(), got.text)
        assert (got.json()["field"], got.json()["index"]) == (field, index), got.text
    got = requests.post(f"{url}/v1/score", data=b"x" * (5 << 20), timeout=30)
    assert got.status_code == 413
    got = requests.post(url + "/", data=b"not a pickle", timeout=30)
    assert got.status_code == 400 and pickle.loads(got.content)["field"] == "body"
