"""Build rdfast: the Python package, the Triton kernels (``kernels/`` -> ``rdfast.kernels``) and the
optional pybind11 CPU extension ``rdfast._C`` from ``csrc/``.

The extension uses plain pybind11 (no torch headers), so it builds in seconds. If it cannot be built
(no compiler, no OpenMP), installation goes on without it and says so; rdfast then falls back to the
plain torch head on CPU.
"""
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 missing from the build environment: build without the extension
    Pybind11Extension = None


class OptionalBuildExt(build_ext):
    """Build the C++ extension when possible, and say clearly when it is skipped."""

    def run(self):
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - any build failure means "skip", loudly
            self._skip(err)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self._skip(err)

    @staticmethod
    def _skip(err):
        sys.stderr.write(
            "\n*** rdfast: the C++ extension rdfast._C was NOT built (%s).\n"
            "*** rdfast works without it; backend='cpp' will be unavailable and 'auto' uses torch on CPU.\n\n"
            % err
        )


ext_modules = []
if Pybind11Extension is not None and os.environ.get("RDFAST_NO_EXT", "0") != "1":
    ext_modules.append(
        Pybind11Extension(
            "rdfast._C",
            sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
            depends=sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")),  # rebuild on header edits
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
            extra_link_args=["-fopenmp"],
        )
    )

#: the trained toy-world models (``toy:NAME``): a checkpoint or pipeline per folder; a reward model's chat
#: template is its own file (chat_template.jinja)
TOY_DATA = ["models/*/*.json", "models/*/*/*.json", "models/*/*.safetensors", "models/*/*/*.safetensors",
            "models/*/*.txt", "models/*/*/*.txt", "models/*/*.jinja", "models/*/*/*.jinja"]
HF = ["transformers>=5.17,<6", "tokenizers>=0.20", "diffusers>=0.35", "accelerate>=1.0", "peft>=0.15", "safetensors>=0.4"]

setup(
    name="rdfast",
    version="0.1.0",
    description="High-performance engine for generative visual reward models (RewardDance)",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rdfast", "rdfast.*"]) + ["rdfast.kernels"],
    package_dir={"rdfast.kernels": "kernels"},
    package_data={"rdfast.toyworld": TOY_DATA},
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "torch>=2.11",
        "numpy>=1.24",
        "pillow>=10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "hf": HF,
        "triton": ["triton>=3.6"],
        "gpu": ["flash-attn>=2.6", "xformers>=0.0.28"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2.2", "pytest-xdist>=3.5", "ruff>=0.6"],
        # PyAV: decodes video files (mp4, mkv, webm, ...); frame folders and tensors need nothing
        "video": ["av>=12"],
        # rdfast serve: HTTP server (httpx for the tests' client)
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20", "httpx>=0.27"],
        # rdfast serve --ray (Ray Serve replicas) and rdfast.integrations.ray (Ray Data offline scoring)
        "ray": ["ray[serve,data]>=2.60,<3"],
    },
    entry_points={"console_scripts": ["rdfast=rdfast.cli:main"]},
)
