"""rdfast: a fast engine for generative visual reward models (RewardDance).

``import rdfast`` is cheap: transformers, triton and diffusers load on first use.

    >>> import rdfast
    >>> rm = rdfast.RewardModel.from_pretrained("path/to/Qwen2-VL-checkpoint")
    >>> rm.compare(images1=refs, images2=candidates, prompts=prompts)   # P("yes") per pair
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "RewardModel": "rdfast.model",
    "RemoteRewardModel": "rdfast.remote",
    "Template": "rdfast.templates",
    "ops": "rdfast.ops",
    "prompts": "rdfast.prompts",
    "testing": "rdfast.testing",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        value = module if _LAZY[name].endswith(name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rdfast' has no attribute {name!r}")
