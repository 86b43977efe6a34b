"""One resolver for model specs: a local directory, tiny:NAME, or a hub id read from the local hub cache."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import load_rm, write_images
from rdfast import RewardModel
from rdfast.cli import main
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
    with pytest.raises(InputError, match="local directory, a tiny:NAME or toy:NAME spec or a hub id"):
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


def hub_cache(root, repo_id, checkpoint, commit="89abcdef0123456789abcdef0123456789abcdef"):
    """A hub cache as huggingface_hub writes it: models--org--name/blobs/<sha256> holding each file,
    snapshots/<commit>/<file> a relative link to its blob, refs/main naming the commit."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    for source in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = repo / "snapshots" / commit / source.relative_to(checkpoint)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


QWEN3_VL_ID = "Qwen/Qwen3-VL-8B-Instruct"  # a stand-in: the tiny qwen3_vl checkpoint filed under a real id


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline hub cache (HF_HUB_OFFLINE=1, HF_HUB_CACHE at a temp dir) holding tiny:qwen3_vl under a Qwen3-VL
    id; huggingface_hub reads both settings at import, so they are set on its constants here."""
    from huggingface_hub import constants

    snapshot = hub_cache(tmp_path / "hub", QWEN3_VL_ID, tiny_checkpoint("qwen3_vl"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snapshot


def test_qwen3_vl_hub_id_loads_offline_and_scores_as_its_directory(offline_hub, tmp_path, gen):
    rm = RewardModel.from_pretrained(QWEN3_VL_ID, device="cpu")
    assert rm.family.name == "qwen3_vl" and os.path.samefile(rm.model.name_or_path, offline_hub)
    seed = int(torch.randint(0, 2**30, (1,), generator=gen))
    first, second = random_images(2, seed=seed), random_images(2, seed=seed + 1)
    expected = load_rm("qwen3_vl").compare(first, second, ["a fox", "a red car"]).log()
    torch.testing.assert_close(rm.compare(first, second, ["a fox", "a red car"]).log(), expected, atol=1e-5, rtol=0)
    pinned = RewardModel.from_pretrained(f"{QWEN3_VL_ID}@89abcdef0123456789abcdef0123456789abcdef", device="cpu")
    assert os.path.samefile(pinned.model.name_or_path, offline_hub)
    # cache_dir=, as in transformers, beside the default cache
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "hub", moved)
    assert os.path.samefile(resolve(QWEN3_VL_ID, tiny_checkpoint, cache_dir=moved), moved / offline_hub.relative_to(
        tmp_path / "hub"))


def test_cli_model_takes_a_hub_id_offline(offline_hub, tmp_path, capsys, gen):
    names = write_images(tmp_path, 2, int(torch.randint(0, 2**30, (1,), generator=gen)))
    lines = [{"prompt": "a fox", "image": str(tmp_path / n)} for n in names]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    main(["score", "--model", QWEN3_VL_ID, "--input", str(tmp_path / "in.jsonl"), "--output",
          str(tmp_path / "out.jsonl"), "--device", "cpu"])
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = load_rm("qwen3_vl").score([str(tmp_path / n) for n in names], ["a fox"] * 2)
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]).log(), expected.log(), atol=1e-5, rtol=0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--model", "Qwen/Qwen3-VL-404B", "--input", str(tmp_path / "in.jsonl"), "--output",
              str(tmp_path / "missing.jsonl"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "'Qwen/Qwen3-VL-404B'" in err and "not in the local hub cache" in err and "HF_HUB_OFFLINE=1" in err


def test_missing_hub_id_names_the_id_and_the_offline_setting(offline_hub):
    with pytest.raises(InputError) as err:
        RewardModel.from_pretrained("Qwen/Qwen3-VL-404B-Instruct", device="cpu")
    message = str(err.value)
    assert "'Qwen/Qwen3-VL-404B-Instruct'" in message and "no such local directory" in message
    assert "not in the local hub cache" in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(InputError, match=r"not in the local hub cache \(local_files_only=True\)"):
        resolve("Qwen/Qwen3-VL-404B-Instruct", tiny_checkpoint, local_files_only=True)
    with pytest.raises(InputError, match="contradicts the spec's @v1"):
        resolve(f"{QWEN3_VL_ID}@v1", tiny_checkpoint, revision="v2")


@pytest.mark.parametrize("offline", [True, False])
@pytest.mark.parametrize("spec", ["./nope", "models/nope", "models/nope/deeper", "../nope", "/no/such/dir"])
def test_a_missing_relative_path_is_never_sent_to_the_hub(spec, offline, tmp_path, monkeypatch):
    """With ./models present, 'models/nope' is a mistyped path, not a hub id: the error names the spec, the offline
    setting and "no such local directory", and the hub is never asked (online too). Before the fix, 'models/nope'
    went to the hub (offline: "not in the local hub cache", no word of a missing directory)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def asked(*args, **kwargs):
        raise AssertionError(f"the hub was asked for {args}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", asked)
    with pytest.raises(InputError) as err:
        RewardModel.from_pretrained(spec, device="cpu")
    message = str(err.value)
    assert f"'{spec}'" in message and "no such local directory" in message
    assert ("HF_HUB_OFFLINE=1" if offline else "HF_HUB_OFFLINE is not set") in message
