"""One resolver for model specs: a local directory, tiny:NAME, or a hub id read from the local hub cache."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import load_rm
from rdfast.errors import InputError
from rdfast.resolve import resolve
from rdfast.testing import random_images, tiny_checkpoint


def test_local_directory_and_tiny_spec(tmp_path):
    path = tiny_checkpoint("qwen2_vl")
    assert resolve(str(path), tiny_checkpoint) == os.path.abspath(path)
    assert resolve("tiny:qwen2_vl", tiny_checkpoint) == os.path.abspath(path)
    with pytest.raises(InputError, match="tiny:nope"):
        resolve("tiny:nope", tiny_checkpoint)


@pytest.mark.parametrize("spec", ["", "not/a/hub/id", "./missing-dir", "org/name@", "http://x/y"])
def test_unknown_spec_is_one_error_listing_the_forms(spec):
    with pytest.raises(InputError, match="local directory, a tiny:NAME spec, a toy:NAME spec or a hub id"):
        resolve(spec, tiny_checkpoint, "reward model")


def test_hub_id_loads_offline_from_a_local_hub_cache(tmp_path, gen):
    """A hub cache laid out as huggingface_hub writes it (models--org--name/snapshots/<commit>, refs/main),
    built here from the tiny checkpoint: loading by hub id reads it with downloads off, and scores as the
    directory does. Pickled weights in the snapshot are never what loads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen"
    shutil.copytree(tiny_checkpoint("qwen2_vl"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    images = tmp_path / "im.png"
    random_images(1, seed=int(gen.seed() % 2**30))[0].save(images)
    code = ("import sys, rdfast; rm = rdfast.RewardModel.from_pretrained('tiny-org/tiny-qwen', device='cpu');"
            "print(repr(rm.score([sys.argv[1]], ['a fox']).log().item()))")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(images)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = load_rm("qwen2_vl").score([str(images)], ["a fox"]).log().item()
    assert abs(float(out.stdout.strip()) - expected) < 1e-5  # fp32: 1e-5 in log P
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", code, str(images)], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "not in the local hub cache" in out.stderr
