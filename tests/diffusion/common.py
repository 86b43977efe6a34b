"""Helpers of the diffusion tests."""
import os


def random_seed() -> int:
    """A fresh seed per call: fresh random inputs in every check."""
    return int.from_bytes(os.urandom(4), "little")
