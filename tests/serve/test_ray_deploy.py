"""``rdfast serve --ray``: the same HTTP API on 2 Ray Serve replicas of the tiny model (a local Ray instance):
scores equal in-process scoring, every concurrent request answered, and the flags checked before Ray starts."""
import base64
import io
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray_cluster
import requests
import torch
from PIL import Image
from ray_cluster import ray_local  # noqa: F401 - the session's Ray instance

from conftest import load_rm
from rdfast.cli import main
from rdfast.serve import ray_deploy
from rdfast.serve.app import ServeSettings
from rdfast.testing import tiny_checkpoint

TOL = 1e-5  # float32, on log P(yes)


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("flags, message", [(["--ray", "--replicas", "0"], "must be positive, got 0 and 1.0"),
                                            (["--ray", "--replica-cpus", "-1"], "must be positive"),
                                            (["--replicas", "2"], "--replicas and --replica-cpus need --ray")])
def test_bad_ray_flags_are_one_line_and_exit_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", "no/such/model", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err



def test_ray_flags_fail_before_ray_starts(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the rdfast[ray] extra: import ray fails
    for argv, message in ((["--model", "no/such/model/dir"], "'no/such/model/dir': no such local directory"),
                          (["--model", "tiny:qwen2_vl"], "needs Ray Serve: pip install 'rdfast[ray]'")):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", *argv, "--ray", "--device", "cpu"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


@pytest.mark.ray
@pytest.mark.timeout(90)
@pytest.mark.usefixtures("ray_local")
def test_two_replicas_score_as_in_process_and_lose_nothing():
    from ray import serve

    rm = load_rm("qwen2_vl")
    rng = np.random.default_rng()
    options = ray_deploy.RayOptions(replicas=2, replica_cpus=ray_cluster.ACTOR_CPUS, port=free_port())
    assert options.host == "127.0.0.1"
    try:
        url = ray_deploy.start(str(tiny_checkpoint("qwen2_vl")), ServeSettings(max_wait_ms=20, model_name="tiny"),
                               options, device="cpu")
        status = serve.status().applications[ray_deploy.APP_NAME].deployments["RewardReplica"]
        assert status.replica_states.get("RUNNING") == 2
        health = requests.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "ok" and health["yes_token_id"] == rm.yes_token_id

        n = 24
        images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB") for _ in range(n)]
        prompts = [f"a picture of thing {k}" for k in range(n)]
        bad = {7, 15}  # a chat token in user text: 400 for that request only

        def post(k):
            prompt = prompts[k] + (" <|im_start|>" if k in bad else "")
            return requests.post(f"{url}/v1/score", json={"images": [png_b64(images[k])], "prompts": [prompt]},
                                 timeout=60)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(n)))
        good = [k for k in range(n) if k not in bad]
        assert [answers[k].status_code for k in bad] == [400, 400]
        assert all(answers[k].json()["field"] == "prompts" for k in bad)
        assert [answers[k].status_code for k in good] == [200] * len(good), [a.text for a in answers]
        got = torch.tensor([answers[k].json()["scores"][0] for k in good])
        want = rm.score(images=[images[k] for k in good], prompts=[prompts[k] for k in good])
        torch.testing.assert_close(got.log(), want.log(), atol=TOL, rtol=0)
    finally:
        ray_deploy.stop()  # Serve's replicas release their CPUs before any other Ray test
