#!/usr/bin/env bash
# Download, on a machine with network, the wheels the GPU image lacks into the git-ignored .whl/ (for Python 3.12,
# manylinux x86-64), so that bench/gpu_check.sh can install them there with pip --no-index from .whl/ alone.
#
#   bash scripts/fetch_gpu_wheels.sh              # diffusers and whatever it needs beyond the image
#   bash scripts/fetch_gpu_wheels.sh diffusers peft==0.21.2   # other roots (NAME or NAME==VERSION)
#
# The list is computed, not guessed: starting from the roots, each wheel's Requires-Dist (extras skipped, markers
# evaluated for CPython 3.12 on Linux x86-64) is followed recursively, and every requirement already on the GPU
# image (IMAGE_PACKAGES below) stops there. A root or requirement installed here is fetched at the version
# installed here (the combination the tests ran with) when it satisfies the requirement; otherwise pip picks the
# newest that does. An image package whose known version violates a requirement is reported, not fetched.
# .whl/ is this script's folder: its wheels are replaced on every run (two versions of one package stop pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import packaging" 2>/dev/null || { echo "needs the 'packaging' module for $PY" >&2; exit 2; }
mkdir -p .whl
rm -f .whl/*.whl
"$PY" - "${@:-diffusers}" <<'EOF'
import importlib.metadata as md
import os, re, subprocess, sys, tempfile, zipfile
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# The GPU image's Python packages (kind nvidia-h200, image 'cuda'), as read there on 2026-11-17 (the device notes'
# KINDS.md); versions where a session's pip list saw them (2026-11). Refresh from `python3 -m pip list` there.
IMAGE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "sentencepiece": "0.2.2", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0",
                  "triton": "3.6.0", "torchvision": "0.26.0", "jax": "0.11.2"}
IMAGE = {canonicalize_name(n) for n in IMAGE_PACKAGES}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]
DEST = ".whl"


def local_version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def download(req: Requirement) -> str:
    """pip download of one requirement, no dependencies, binary only, for CPython 3.12: the wheel's path."""
    here = local_version(req.name)
    spec = f"{req.name}=={here}" if here and req.specifier.contains(here, prereleases=True) else f"{req.name}{req.specifier}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", tmp, spec]
        print("+", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
        (wheel,) = os.listdir(tmp)
        os.replace(os.path.join(tmp, wheel), os.path.join(DEST, wheel))
    return os.path.join(DEST, wheel)


def requires(wheel: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = []
    for line in lines:
        if not line:
            break  # the headers end at the first blank line
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(TARGET):  # extras evaluate false with extra == ""
                reqs.append(r)
    return reqs


queue = [Requirement(a) for a in sys.argv[1:]]
done, fetched, problems = set(), [], []
while queue:
    req = queue.pop(0)
    key = canonicalize_name(req.name)
    if key in IMAGE:
        known = IMAGE_VERSIONS.get(key)
        if known and not req.specifier.contains(known, prereleases=True):
            problems.append(f"{req} but the image has {key} {known}")
        continue
    if key in done:
        continue
    done.add(key)
    wheel = download(req)
    fetched.append(wheel)
    queue.extend(requires(wheel))

total = sum(os.path.getsize(w) for w in fetched)
print(f"\n{len(fetched)} wheels in {DEST}/, {total / 2**20:.1f} MiB:")
for w in fetched:
    print(f"  {os.path.basename(w)}  {os.path.getsize(w) / 2**20:.2f} MiB")
for p in problems:
    print("WARNING: requirement not met on the image:", p)
if total > 40 * 2**20:  # the working tree that travels to the GPU machine is capped at 64 MiB
    sys.exit(f"ERROR: {total / 2**20:.1f} MiB of wheels: too much to carry (keep it well under 64 MiB)")
EOF
echo "copy .whl/ beside the checkout on the GPU machine (same folder as bench/), then: bash bench/gpu_check.sh OUT"
