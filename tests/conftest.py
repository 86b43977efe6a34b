import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# rdfast picks its CPU threads from the load of the moment (rdfast/cpu_threads.py); a GEMM split over 1 or 2
# threads rounds differently (~1e-7), which would break the bitwise-equality tests whenever another test's
# subprocess makes the machine busy. The policy itself is tested in tests/test_cpu_threads.py.
os.environ.setdefault("RDFAST_NUM_THREADS", "torch")

import pytest  # noqa: E402
import torch  # noqa: E402

# qwen3_vl_moe shares Qwen3VLFamily with qwen3_vl, qwen3_5_moe Qwen3_5Family with qwen3_5: their own tests
# (tests/test_qwen3_vl.py, tests/test_qwen3_5.py, tests/train/) cover the MoE models; running every generic test
# on qwen3_vl_moe too cost about 90 s of CI for code the dense model already covers
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl")

_MODELS = {}
#: an image side no family resizes: a multiple of every Qwen unit (28 px; Qwen3-VL 32 px) and InternVL's 56 px tile
_UNRESIZED = {"qwen3_vl": 64, "qwen3_vl_moe": 64, "qwen3_5": 64, "qwen3_5_moe": 64}


def unresized_side(family: str) -> int:
    """A square image side that ``family``'s preprocessing keeps as it is (56 px, or 64 for Qwen3-VL)."""
    return _UNRESIZED.get(family, 56)


def load_rm(family, **kwargs):
    """A RewardModel on a tiny checkpoint, cached per (family, options) for the whole session."""
    from rdfast import RewardModel
    from rdfast.testing import tiny_checkpoint

    key = (family, repr(sorted(kwargs.items())))
    if key not in _MODELS:
        _MODELS[key] = RewardModel.from_pretrained(tiny_checkpoint(family), device="cpu", **kwargs)
    return _MODELS[key]


def skip_unless_prefix_shared(rm):
    """For tests of the shared-prefix path. A family may refuse it on this install (Qwen3.5 on a transformers
    version its hybrid cache was not tested on: families/qwen3_5.py), and then scores unshared, which
    tests/test_qwen3_5.py checks; the shared path's tests skip, with the reason, until the version is tested."""
    refusal = rm.family.prefix_cache_refusal()
    if refusal is not None:
        pytest.skip(refusal)


def pytest_configure(config):
    # scripts/test.sh runs two pytest-xdist workers on CI's two cores; at torch's default of one thread per core
    # each, two workers would oversubscribe them (subprocesses the tests start keep their own defaults)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def rm(family):
    model = load_rm(family)
    model.padding_side = "left"
    return model


@pytest.fixture
def gen():
    """A fresh generator per test: fresh random inputs in every check."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def write_images(folder, n, seed):
    """n random PNG images (im0.png, im1.png, ...) in folder; returns their names."""
    from rdfast.testing import random_images

    names = []
    for k, im in enumerate(random_images(n, seed=seed)):
        names.append(f"im{k}.png")
        im.save(folder / names[-1])
    return names


def save_frames(folder, frames, order=None):
    """A video [T, 3, H, W] in [0, 1] as a folder of PNG frames 000.png, 001.png, ... (written in ``order``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t in order if order is not None else range(len(frames)):
        array = (frames[t].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{t:03d}.png")


@pytest.fixture
def loads(monkeypatch):
    """The cached tiny ``qwen2_vl`` stands in for every ``rdfast score``/``compare`` load (``rdfast.cli._load``);
    returns the list of model specs loaded, so a test can say a refusal came before any load."""
    import rdfast.cli

    made = []

    def load(args):
        made.append(args.model)
        return load_rm("qwen2_vl")

    monkeypatch.setattr(rdfast.cli, "_load", load)
    return made


def user_error(capsys, *args):
    """Run ``rdfast ARGS`` expecting a user error: exit code 2, one line on stderr, no traceback. Returns the line."""
    from rdfast.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
