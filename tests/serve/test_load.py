"""Load and safety on a real server whose model call is a stand-in (so the tests control timing): a full queue
answers 503 with Retry-After on the JSON endpoints and holds Flow-GRPO requests (then 500, never 503), an item
only the model refuses fails only its own request, equal pixels reach the model as one object, the API key."""
import base64
import io
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image

from rdfast.errors import InputError
from rdfast.serve.app import ServeSettings, create_app


class StandIn:
    """A batch call that records its batches, can be held shut, and refuses prompts containing "model-refuses"."""

    def __init__(self):
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []
        self.gate.set()

    def __call__(self, key, columns, prompts):
        self.calls.append((key, columns, prompts))
        self.entered.set()
        assert self.gate.wait(30)
        for i, prompt in enumerate(prompts):
            if "model-refuses" in prompt:
                raise InputError("refused by the model", i, "prompts")
        return [len(p) / 100 for p in prompts]


def png(image, level=6) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return base64.b64encode(buf.getvalue()).decode()


def image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB")


def score(url, prompts, images=None, headers=None):
    images = images or [png(image())] * len(prompts)
    return requests.post(f"{url}/v1/score", json={"images": images, "prompts": prompts}, headers=headers, timeout=60)


def flow_grpo(url, prompts, headers=None):
    buf = io.BytesIO()
    image().save(buf, format="JPEG")
    body = pickle.dumps({"images": [buf.getvalue()] * len(prompts), "prompts": np.array(prompts)})
    return requests.post(url + "/", data=body, headers=headers, timeout=60)


def test_full_queue_answers_503_json_and_holds_flow_grpo(rm, start_server):
    model = StandIn()
    settings = ServeSettings(max_batch=1, max_wait_ms=0, queue_size=2, flow_grpo_wait_s=1.0)
    url = start_server(create_app(rm, settings, run_batch=model))
    model.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(score, url, ["first"])
        assert model.entered.wait(30)  # the batcher holds "first"; now fill the queue
        queued = [pool.submit(score, url, [f"queued {i}"]) for i in range(2)]
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/metrics", timeout=10).text.count("rdfast_queue_depth 2.0") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        full = score(url, ["one too many"])
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        held = flow_grpo(url, ["held too long"])  # waits flow_grpo_wait_s for room, then 500 (its client retries)
        assert held.status_code == 500 and "busy" in pickle.loads(held.content)["error"]
        late = pool.submit(flow_grpo, url, ["held then served"])
        time.sleep(0.3)
        model.gate.set()
        assert first.result().status_code == 200
        assert [q.result().json()["scores"] for q in queued] == [[0.08], [0.08]]
        assert late.result().status_code == 200
        assert pickle.loads(late.result().content) == {"outputs": [len("held then served") / 100]}


def test_an_item_only_the_model_refuses_fails_only_its_request_and_pixels_are_shared(rm, start_server):
    model = StandIn()
    url = start_server(create_app(rm, ServeSettings(max_batch=64, max_wait_ms=300), run_batch=model))
    same = image(1)
    bodies = [["ok a", "ok b"], ["model-refuses this", "fine"], ["ok c"]]
    # the same pixels in differently compressed PNG files: one image object for the model
    encodings = [[png(same, 1), png(image(2))], [png(image(3)), png(image(4))], [png(same, 9)]]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda k: score(url, bodies[k], encodings[k]), range(3)))
    assert answers[0].json() == {"scores": [0.04, 0.04]} and answers[2].json() == {"scores": [0.04]}
    assert answers[1].status_code == 400 and answers[1].json()["field"] == "prompts"
    first_call = model.calls[0]
    assert len(first_call[2]) == 5  # all three requests met in one call
    images = first_call[1][0]
    # five images, four distinct pixel contents (requests may arrive in any order): the two copies are one object
    assert len({id(i) for i in images}) == 4


def test_api_key(rm, start_server):
    url = start_server(create_app(rm, ServeSettings(api_key="s3cret", max_wait_ms=0), run_batch=StandIn()))
    assert requests.get(f"{url}/health", timeout=10).status_code == 200  # probes need no key
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        got = score(url, ["x"], headers=headers)
        assert got.status_code == 401 and got.headers["WWW-Authenticate"] == "Bearer"
        assert requests.get(f"{url}/metrics", headers=headers, timeout=10).status_code == 401
        assert flow_grpo(url, ["x"], headers=headers).status_code == 401
    key = {"Authorization": "Bearer s3cret"}
    assert score(url, ["x"], headers=key).json() == {"scores": [0.01]}
    assert flow_grpo(url, ["x"], headers=key).status_code == 200
    assert "rdfast_requests_total" in requests.get(f"{url}/metrics", headers=key, timeout=10).text
