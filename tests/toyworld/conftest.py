"""Shared by the toy-world tests: tiny models run on one thread (robust on a busy shared CPU)."""
import pytest

from rdfast.diffusion.testing import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield
