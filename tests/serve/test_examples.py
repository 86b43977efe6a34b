"""Each script in examples/ run against a local server over the tiny Qwen2-VL (the remote client as a separate
process, as a user runs it; the adapters' scripts through their ``main``); what it prints equals in-process
scoring of the same images (1e-5)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rdfast.serve.app import ServeSettings, create_app

TOL = 1e-5
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url(rm, start_server):
    return start_server(create_app(rm, ServeSettings(max_wait_ms=20)))


def example(name, capsys=None):
    """(the example's module, for its demo inputs; the seed; a function running it with that seed and returning
    the JSON it prints). With ``capsys`` it runs in this process (its ``main``), else as a script in a new process
    (a user's command line; it costs a Python start, so one example goes that way)."""
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seed = int.from_bytes(os.urandom(3), "little")

    def run(url):
        argv = ["--url", url, "--seed", str(seed)]
        if capsys is not None:
            module.main(argv)
            return json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, str(path), *argv], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    return module, seed, run


def test_remote_client_example(url, rm):
    module, seed, run = example("remote_client")
    got = run(url)
    images, prompt = module.demo_images(4, seed), "a red fox in the snow"
    assert torch.allclose(torch.tensor(got["scores"]), rm.score(images=images, prompts=[prompt] * 4), atol=TOL, rtol=0)
    best = rm.rank(candidates=images, prompt=prompt).order[0]
    assert got["order"][0] == best
    want = rm.compare(images1=[images[best]] * 4, images2=images, prompts=[prompt] * 4)
    assert torch.allclose(torch.tensor(got["group_scores"]), want, atol=TOL, rtol=0)
    assert abs(got["group_std"] - float(np.std(want.double().numpy()))) < 1e-5


def test_flow_grpo_example(url, rm, capsys):
    module, seed, run = example("flow_grpo_reward", capsys)
    got = run(url)
    batch = module.demo_batch(4, seed).double().numpy()  # float NCHW; Flow-GRPO's rewards score its 8-bit rounding
    eight_bit = [Image.fromarray(np.rint(x.transpose(1, 2, 0) * 255).astype(np.uint8)) for x in batch]
    want = rm.score(images=eight_bit, prompts=["a cat", "a dog", "a red car", "a lighthouse at dusk"])
    assert torch.allclose(torch.tensor(got["scores"]), want, atol=TOL, rtol=0) and got["info"] == {}


def test_verl_omni_example(url, rm, capsys):
    module, seed, run = example("verl_omni_reward", capsys)
    got = run(url)
    images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in module.demo_images(4, seed)]
    want = rm.score(images=images, prompts=["a cat", "a dog", "a red car", "a lighthouse at dusk"])
    assert torch.allclose(torch.tensor([r["score"] for r in got]), want, atol=TOL, rtol=0)
