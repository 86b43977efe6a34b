"""``toy:NAME``: trained toy-world models shipped as package data in rdfast/toyworld/models/NAME, resolved by the
one resolver. The mechanism is tested on a small pipeline planted in a temporary TOY_DIR; the last test loads the
shipped toy:generator."""
import ast
import fnmatch
import os
import pathlib

import pytest
import torch

import rdfast.resolve
from rdfast.diffusion.pipelines import load_pipeline
from rdfast.errors import InputError
from rdfast.resolve import resolve, toy_names
from rdfast.toyworld.generator import build_pipeline, sample

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = dict(vae_channels=(8, 16, 16), width=32, heads=2, double_layers=1, single_layers=1, text_width=16)


def no_tiny(name):
    raise ValueError("no tiny models here")


@pytest.fixture(scope="module")
def small_pipe():
    return build_pipeline(seed=int.from_bytes(os.urandom(2), "little"), **SMALL)


@pytest.fixture
def planted(tmp_path, monkeypatch, small_pipe):
    """A TOY_DIR holding a saved toy generator, as the package data will."""
    models = tmp_path / "rdfast" / "toyworld" / "models"
    small_pipe.save_pretrained(models / "generator", safe_serialization=True)
    monkeypatch.setattr(rdfast.resolve, "TOY_DIR", str(models))
    return models


def test_toy_names_resolve_to_shipped_folders_and_unknown_names_list_them(planted, tmp_path, monkeypatch):
    assert toy_names() == ["generator"]
    assert resolve("toy:generator", no_tiny, "pipeline") == str(planted / "generator")
    with pytest.raises(InputError, match="'toy:nope'.*ships toy:generator"):
        resolve("toy:nope", no_tiny, "pipeline")
    monkeypatch.setattr(rdfast.resolve, "TOY_DIR", str(tmp_path / "absent"))
    with pytest.raises(InputError, match="ships none"):
        resolve("toy:generator", no_tiny, "pipeline")


def test_load_pipeline_by_toy_name_samples_as_the_saved_pipeline(planted, small_pipe):
    pipe = load_pipeline("toy:generator", device="cpu")
    assert type(pipe).__name__ == "FluxPipeline"
    prompts, seeds = ["two green circles", "one yellow square"], [int.from_bytes(os.urandom(4), "little")] * 2
    assert torch.allclose(sample(pipe, prompts, seeds, steps=2), sample(small_pipe, prompts, seeds, steps=2),
                          atol=1e-5)  # fp32


def test_setup_ships_every_file_of_a_saved_toy_model(planted):
    """setup.py's TOY_DATA globs (relative to rdfast/toyworld) cover every file a saved toy pipeline has, so a
    wheel carries it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [patterns] = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "TOY_DATA" for t in n.targets)]
    files = [p.relative_to(planted.parent).as_posix() for p in planted.rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files) and any(f.endswith("model_index.json") for f in files)
    missed = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                          for pat in patterns)]
    assert not missed, f"not in setup.py's TOY_DATA: {missed}"


def test_shipped_generator_loads_and_aligns_as_measured():
    """The shipped toy:generator (bf16 weights, float32 compute, 16 steps): its oracle alignment over all
    in-domain prompts x seeds 0-1, measured as loaded when shipped (0.315 over seeds 0-7 in
    bench/results/toy_generator_cpu.json); the range allows other CPUs' rounding."""
    from rdfast import toyworld as tw

    assert "generator" in toy_names()
    pipe = load_pipeline("toy:generator", device="cpu")
    pool = [p for p in tw.prompts("in_domain") for _ in range(2)]
    images = sample(pipe, pool, [0, 1] * len(tw.prompts("in_domain")))
    assert 0.2 <= tw.alignment(images, pool) <= 0.6
