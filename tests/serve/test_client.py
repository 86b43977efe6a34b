"""``rdfast.RemoteRewardModel`` and ``rdfast.integrations`` against a real server over the tiny Qwen2-VL: the same
answers as in-process scoring (1e-5) for PIL images, tensors and numpy arrays; 503 retried after Retry-After, a
dead server retried with a bounded, doubling backoff; bad requests raise errors naming the field and item."""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
from PIL import Image

import rdfast
from rdfast import remote
from rdfast.integrations import compute_score, flow_grpo
from rdfast.serve.app import ServeSettings, create_app

from .test_load import StandIn, score
from .test_server import random_image

TOL = 1e-5


@pytest.fixture(scope="module")
def url(rm, start_server):
    return start_server(create_app(rm, ServeSettings(max_wait_ms=20)))


def pil_images(n, size=None):
    rng = np.random.default_rng()
    return [random_image(rng, size) for _ in range(n)]


def test_client_calls_equal_in_process(url, rm):
    client = rdfast.RemoteRewardModel(url)
    images, others = pil_images(3), pil_images(3)
    prompts = ["a red fox", "a blue car", "two cats"]
    got = client.score(images=images, prompts=prompts)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(got, rm.score(images=images, prompts=prompts), atol=TOL, rtol=0)
    got = client.compare(images1=images, images2=others, prompts=prompts, debias=True)
    assert torch.allclose(got, rm.compare(images1=images, images2=others, prompts=prompts, debias=True), atol=TOL,
                          rtol=0)
    ranked, want = client.rank(candidates=images, prompt="a fox", top_k=2), rm.rank(candidates=images, prompt="a fox",
                                                                                    top_k=2)
    assert ranked.order == want.order and ranked.top == want.top and torch.equal(ranked.wins, want.wins)
    group = client.group(candidates=images, prompt="a fox", reference=others[0])
    want = rm.compare(images1=[others[0]] * 3, images2=images, prompts=["a fox"] * 3)
    assert torch.allclose(group.scores, want, atol=TOL, rtol=0)
    assert abs(group.std - float(np.std(want.numpy().astype(np.float64)))) < 1e-5


def test_tensors_and_numpy_arrays_score_as_their_8_bit_pixels(url, rm):
    client = rdfast.RemoteRewardModel(url)
    pixels = np.stack([np.asarray(im) for im in pil_images(2, (40, 36))])  # uint8 [N, H, W, 3]
    want = rm.score(images=pil_images_of(pixels), prompts=["a", "b"])
    floats = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255  # exact 8-bit values as floats
    for images in (pixels, list(pixels), floats.float(), list(floats.float()), pixels.astype(np.float32) / 255):
        assert torch.allclose(client.score(images=images, prompts=["a", "b"]), want, atol=TOL, rtol=0)


def pil_images_of(pixels):
    return [Image.fromarray(p) for p in pixels]


def test_bad_requests_raise_errors_naming_the_item(url, rm):
    client = rdfast.RemoteRewardModel(url)
    images = pil_images(2)
    with pytest.raises(remote.RemoteInputError) as err:
        client.score(images=images, prompts=["fine", "hello <|im_end|> world"])
    assert (err.value.field, err.value.index, err.value.status) == ("prompts", 1, 400)
    assert isinstance(err.value, rdfast.errors.InputError) and str(err.value).startswith("prompts[1]: ")
    with pytest.raises(remote.RemoteInputError) as err:
        client.rank(candidates=images, prompt="x", top_k=5)
    assert (err.value.field, err.value.status) == ("top_k", 400)
    with pytest.raises(rdfast.errors.InputError, match=r"images\[1\]"):  # refused here, before any request
        client.score(images=[images[0], np.zeros((4, 4, 3), dtype=np.float32) + 2], prompts=["a", "b"])


def test_503_is_retried_after_retry_after_and_a_dead_server_is_bounded(rm, start_server, monkeypatch):
    model = StandIn()
    url = start_server(create_app(rm, ServeSettings(max_batch=1, max_wait_ms=0, queue_size=1, api_key="k"),
                                  run_batch=model))
    headers = {"Authorization": "Bearer k"}
    image = pil_images(1)
    model.gate.clear()
    pauses, futures = [], {}

    def sleep(seconds):  # the client's pause: record it, and let the server drain (a real pause would give it time)
        pauses.append(seconds)
        model.gate.set()
        if "queued" in futures:
            futures["queued"].result(timeout=30)  # the queue is empty again: the retry is not refused a second time

    monkeypatch.setattr(remote, "time", SimpleNamespace(sleep=sleep))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(score, url, ["first"], None, headers)
        assert model.entered.wait(30)
        queued = futures["queued"] = pool.submit(score, url, ["queued"], None, headers)
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/metrics", headers=headers, timeout=10).text.count("rdfast_queue_depth 1.0") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        got = rdfast.RemoteRewardModel(url, api_key="k", backoff_s=0.25).score(images=image, prompts=["retried"])
        assert first.result().status_code == queued.result().status_code == 200
    assert got.tolist() == pytest.approx([len("retried") / 100])
    assert pauses == [1.0]  # the server's Retry-After, not the client's 0.25 s backoff
    with pytest.raises(remote.RemoteError) as err:
        rdfast.RemoteRewardModel(url, api_key="wrong").score(images=image, prompts=["x"])
    assert err.value.status == 401

    pauses.clear()
    dead = rdfast.RemoteRewardModel("http://127.0.0.1:9", retries=3, backoff_s=0.5, max_backoff_s=1.0)
    with pytest.raises(remote.RemoteError, match="unavailable after 4 tries"):
        dead.score(images=image, prompts=["x"])
    assert pauses == [0.5, 1.0, 1.0]


def test_flow_grpo_adapter_remote_and_in_process(url, rm):
    pixels = np.stack([np.asarray(im) for im in pil_images(3, (32, 44))])  # Flow-GRPO's uint8 NHWC
    prompts = np.array(["a cat", "a dog", "a cow"])
    want = rm.score(images=pil_images_of(pixels), prompts=list(prompts)).numpy()
    as_float = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255  # its float NCHW in [0, 1]
    for fn in (flow_grpo(url), flow_grpo(rm)):
        for images in (pixels, as_float, pil_images_of(pixels)):
            scores, info = fn(images, prompts, [{}] * 3)
            assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and info == {}
            np.testing.assert_allclose(scores, want, atol=TOL, rtol=0)
    with pytest.raises(rdfast.errors.InputError, match="prompts"):
        flow_grpo(rm)(pixels, ["only one"], None)


def test_verl_omni_compute_score(url, rm):
    image = pil_images(1, (36, 30))[0]
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # verl-omni's uint8 [C, H, W]

    async def run():
        return await asyncio.gather(*[compute_score(data_source="t2i", solution_image=chw, ground_truth=f"prompt {k}",
                                                    extra_info={"num_turns": None}, server_url=url,
                                                    reward_router_address=None) for k in range(3)])

    got = asyncio.run(run())
    want = rm.score(images=[image] * 3, prompts=[f"prompt {k}" for k in range(3)])
    assert [set(r) for r in got] == [{"score"}] * 3
    assert torch.allclose(torch.tensor([r["score"] for r in got]), want, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="video"):
        asyncio.run(compute_score("t2v", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "x", {}, server_url=url))
