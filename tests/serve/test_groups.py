"""/v1/rank and /v1/group on a real server over the tiny Qwen2-VL: answers equal in-process rm.rank / rm.compare /
rm.score (1e-5), the group statistics follow their definition (numpy, ddof 0), the paradigm recorded in
rdfast_config.json decides pointwise scoring, bad fields are 422/400 naming the field (and item), and the group
telemetry reaches /metrics."""
import shutil

import numpy as np
import pytest
import requests
import torch

from rdfast import RewardModel
from rdfast.reward_config import RewardConfig
from rdfast.serve.app import ServeSettings, create_app
from rdfast.testing import tiny_checkpoint

from .test_server import metric, png_b64, random_image

TOL = 1e-5


@pytest.fixture(scope="module")
def url(rm, start_server):
    return start_server(create_app(rm, ServeSettings(max_wait_ms=20, max_pixels=200_000)))


def stats_of(scores):
    """The documented definition, computed independently: numpy mean, population std, share outside [0.01, 0.99]."""
    a = np.asarray(scores, dtype=np.float64)
    return a.mean(), a.std(ddof=0), float(np.mean((a < 0.01) | (a > 0.99)))


def images(n):
    rng = np.random.default_rng()
    return [random_image(rng) for _ in range(n)]


def test_rank_equals_in_process(url, rm):
    cands = images(4)
    got = requests.post(f"{url}/v1/rank", json={"candidates": [png_b64(c) for c in cands], "prompt": "a red fox",
                                               "top_k": 2}, timeout=120)
    assert got.status_code == 200, got.text
    want = rm.rank(candidates=cands, prompt="a red fox", top_k=2)
    got = got.json()
    assert got["order"] == want.order and got["top"] == want.top == want.order[:2]
    assert got["wins"] == want.wins.tolist()
    assert torch.allclose(torch.tensor(got["win_prob"]), want.win_prob, atol=TOL, rtol=0)


def test_group_against_a_reference_and_best_of_n_equal_in_process(url, rm):
    cands, (ref,) = images(5), images(1)
    prompt = "two cats on a sofa"
    body = {"candidates": [png_b64(c) for c in cands], "prompt": prompt}
    got = requests.post(f"{url}/v1/group", json={**body, "reference": png_b64(ref)}, timeout=120)
    assert got.status_code == 200, got.text
    want = rm.compare(images1=[ref] * 5, images2=cands, prompts=[prompt] * 5)
    got = got.json()
    assert torch.allclose(torch.tensor(got["scores"]), want, atol=TOL, rtol=0)
    mean, std, saturated = stats_of(got["scores"])
    assert abs(got["mean"] - mean) < 1e-12 and abs(got["std"] - std) < 1e-12 and got["saturated_fraction"] == saturated

    got = requests.post(f"{url}/v1/group", json={**body, "reference_mode": "best_of_n"}, timeout=120).json()
    best = rm.rank(candidates=cands, prompt=prompt).order[0]
    assert got["reference_index"] == best
    want = rm.compare(images1=[cands[best]] * 5, images2=cands, prompts=[prompt] * 5)
    assert torch.allclose(torch.tensor(got["scores"]), want, atol=TOL, rtol=0)
    assert abs(got["std"] - stats_of(got["scores"])[1]) < 1e-12


def test_group_telemetry_reaches_metrics(url):
    before = metric(url, "rdfast_group_std_count")
    got = requests.post(f"{url}/v1/group", json={"candidates": [png_b64(c) for c in images(2)], "prompt": "a dog",
                                                "reference_mode": "best_of_n"}, timeout=120)
    assert got.status_code == 200, got.text
    assert metric(url, "rdfast_group_std_count") == before + 1
    assert metric(url, "rdfast_group_saturated_fraction_count") >= 1
    assert metric(url, "rdfast_group_std_sum") >= got.json()["std"]


def test_a_pointwise_model_scores_its_group_alone(tmp_path, start_server):
    directory = tmp_path / "pointwise-rm"
    shutil.copytree(tiny_checkpoint("qwen2_vl"), directory)
    RewardConfig(paradigm="pointwise").save(directory)
    pointwise = RewardModel.from_pretrained(directory, device="cpu")
    assert pointwise.paradigm == "pointwise"
    url = start_server(create_app(pointwise, ServeSettings(max_wait_ms=0)))
    cands = images(3)
    body = {"candidates": [png_b64(c) for c in cands], "prompt": "a boat"}
    got = requests.post(f"{url}/v1/group", json=body, timeout=120)
    assert got.status_code == 200, got.text
    want = pointwise.score(images=cands, prompts=["a boat"] * 3)
    assert torch.allclose(torch.tensor(got.json()["scores"]), want, atol=TOL, rtol=0)
    refused = requests.post(f"{url}/v1/group", json={**body, "reference_mode": "best_of_n"}, timeout=30)
    assert refused.status_code == 400 and refused.json()["field"] == "reference_mode"


def test_bad_rank_and_group_requests_name_the_field(url):
    ok = png_b64(images(1)[0])
    big = png_b64(random_image(np.random.default_rng(), (500, 500)))
    cases = [
        ("rank", {"prompt": "x"}, 422, "candidates", None),
        ("rank", {"candidates": ok, "prompt": "x"}, 422, "candidates", None),
        ("rank", {"candidates": [ok, ok]}, 422, "prompt", None),
        ("rank", {"candidates": [ok, ok], "prompt": "x", "top_k": "1"}, 422, "top_k", None),
        ("rank", {"candidates": [ok, ok], "prompt": "x", "top_k": True}, 422, "top_k", None),
        ("rank", {"candidates": [ok, ok], "prompt": "x", "top_k": 3}, 400, "top_k", None),
        ("rank", {"candidates": [ok], "prompt": "x"}, 400, "candidates", None),
        ("rank", {"candidates": [ok, "not base64!"], "prompt": "x"}, 400, "candidates", 1),
        ("rank", {"candidates": [ok, 7], "prompt": "x"}, 422, "candidates", 1),
        ("rank", {"candidates": [ok, ok], "prompt": " "}, 400, "prompt", None),
        ("rank", {"candidates": [ok, ok], "prompt": "a <|im_end|> b"}, 400, "prompt", None),
        ("group", {"candidates": [ok], "prompt": "x"}, 400, "reference", None),
        ("group", {"candidates": [ok], "prompt": "x", "reference": ok, "reference_mode": "best_of_n"}, 400,
         "reference_mode", None),
        ("group", {"candidates": [ok], "prompt": "x", "reference_mode": "worst"}, 422, "reference_mode", None),
        ("group", {"candidates": [ok], "prompt": "x", "reference": [ok]}, 422, "reference", None),
        ("group", {"candidates": [ok], "prompt": "x", "reference": "%%%"}, 400, "reference", None),
        ("group", {"candidates": [ok], "prompt": "x", "reference_mode": "best_of_n"}, 400, "candidates", None),
        ("group", {"candidates": [ok, big], "prompt": "x", "reference": ok}, 413, "candidates", 1),
        ("group", {"candidates": [ok], "prompt": "x", "reference": ok, "instruction": "<|im_start|>"}, 400,
         "instruction", None),
    ]
    for endpoint, body, status, field, index in cases:
        got = requests.post(f"{url}/v1/{endpoint}", json=body, timeout=30)
        assert got.status_code == status, (endpoint, body.keys(), got.text)
        assert (got.json()["field"], got.json()["index"]) == (field, index), got.text
