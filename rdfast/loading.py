"""Loading a reward model's checkpoint safely: the weights that reach ``RewardModel`` are the checkpoint's, all of
them, finite, and never unpickled unless the user asks.

The policy (``RewardModel.from_pretrained``; pipelines follow the same file rule, rdfast.diffusion.pipelines):

- Weights load from safetensors. A directory whose weights exist only as pickles (``.bin``, ``.pt``, ``.pth``,
  ``.ckpt``, ``.pkl``) is refused unless ``allow_pickle=True`` (``--allow-pickle``): unpickling can run code.
- A weight the checkpoint lacks, which transformers would initialise at random (so scores would change on every
  load), is an error naming it; a tied weight (``tie_word_embeddings``) is not missing. The same holds for the
  LoRA adapter's tensors.
- A NaN or infinite weight is an error naming the tensor.
- A tokenizer without a chat template is used with the plain ``USER: ... ASSISTANT:`` layout
  (``rdfast.prompts``), and a warning naming the model says so once per model.
- A LoRA adapter directory records its base model (``RewardConfig.base_model``) as it was given: a hub id or
  ``tiny:NAME`` as is, a local directory as a path relative to the adapter directory (``./base`` or
  ``../base``), so the two can move together; an absolute path (older directories) is used as is.
  ``base_model=`` overrides the record.
- A model on the CPU in float32 or bfloat16 gets rdfast's faster forwards (``rdfast.cpu_speed.speed_up_cpu``: oneDNN
  linears, patch convolutions as matrix multiplies; within fp32 rounding of the stock ones) unless the environment
  sets ``RDFAST_CPU_FAST=0``; ``rdfast.cpu_speed.restore(rm.model)`` undoes them on a loaded model.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

from .cpu_speed import speed_up_cpu
from .errors import InputError
from .resolve import HUB_ID, resolve
from .reward_config import FILE_NAME, RewardConfig
from .testing import tiny_checkpoint

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ADAPTER_FILE = "adapter_model.safetensors"
_WARNED_NO_TEMPLATE: set[str] = set()


def check_weight_files(directory: str | os.PathLike, allow_pickle: bool, what: str = "model") -> None:
    """Refuse a directory whose weights are pickled only, unless ``allow_pickle``.

    Args:
        directory: a checkpoint directory (or one component folder of a pipeline).
        allow_pickle: the user's consent to unpickle ``.bin``/``.pt`` weights.
        what: what the directory holds, for the message.
    Raises:
        InputError naming the pickled file and the opt-in, when there are pickled weights and no safetensors.
    """
    names = sorted(os.listdir(directory))
    if allow_pickle or any(n.endswith(".safetensors") for n in names):
        return
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise InputError(f"{what} {os.fspath(directory)}: weights are pickled ({pickled[0]}); rdfast loads "
                         "safetensors only, since unpickling can run code. Convert them to safetensors, or pass "
                         "allow_pickle=True (--allow-pickle) if you trust the files")


def check_finite(named_tensors, where: str) -> None:
    """Raise InputError naming the first floating-point tensor holding NaN or inf.

    Args:
        named_tensors: (name, tensor) pairs (a state dict's items); meta tensors (offloaded) are skipped.
        where: the checkpoint, for the message.
    """
    for name, tensor in named_tensors:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InputError(f"{where}: weight {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                             f"{tensor.numel()}; the checkpoint is corrupt")


def check_missing(missing, where: str) -> None:
    """Raise InputError naming the weights a checkpoint lacks (which would otherwise be random)."""
    missing = sorted(missing)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise InputError(f"{where}: the checkpoint lacks {len(missing)} weight(s) the model needs: {shown}; "
                         "transformers would initialise them at random (a truncated or mismatched checkpoint?)")


def record_base_model(spec: str | os.PathLike, directory: str | os.PathLike) -> str:
    """What an adapter directory records as its base model (``RewardConfig.base_model``).

    Args:
        spec: the base model as the user gave it: a local directory, ``tiny:NAME`` or a hub id.
        directory: the adapter's output directory.
    Returns:
        ``spec`` itself for a hub id or ``tiny:NAME``; for a local directory, its path relative to ``directory``
        starting with ``./`` or ``../`` (absolute where no relative path exists, e.g. another drive).
    """
    text = os.fspath(spec)
    if not os.path.isdir(text):
        return text
    absolute = os.path.abspath(text)
    try:
        relative = os.path.relpath(absolute, os.path.abspath(os.fspath(directory)))
    except ValueError:  # another drive
        return absolute
    return relative if relative.startswith(os.pardir) else os.path.join(os.curdir, relative)


def base_model_dir(directory: str, recorded: str | None, override: str | os.PathLike | None = None) -> str:
    """The local directory a model's weights load from: ``directory`` itself, or a LoRA adapter's base model.

    Args:
        directory: the reward-model directory.
        recorded: its ``RewardConfig.base_model`` (None: not an adapter).
        override: the user's ``base_model=`` (a directory, ``tiny:NAME`` or a hub id), used instead of the record.
    Raises:
        InputError naming the recorded base and where it was looked for, when it cannot be found.
    """
    if override is not None:
        return resolve(override, tiny_checkpoint, "base model")
    if recorded is None:
        return directory
    candidate = os.path.join(directory, recorded)  # an absolute record stays absolute
    if os.path.isdir(candidate):
        return os.path.abspath(candidate)
    is_spec = recorded.startswith("tiny:") or (HUB_ID.match(recorded) and not recorded.startswith(os.curdir))
    where = f"LoRA adapter {directory}: base model {recorded!r} (recorded in {FILE_NAME})"
    if not is_spec:
        raise InputError(f"{where} is not at {os.path.abspath(candidate)}; was the directory moved without its "
                         "base? Pass base_model=... (a directory, a hub id or tiny:NAME)")
    try:
        return resolve(recorded, tiny_checkpoint, "base model")
    except InputError as err:
        raise InputError(f"{where}: {err}; pass base_model=... to load it from elsewhere") from err


def warn_without_chat_template(tokenizer, path: str) -> None:
    """Say once per model that prompts use the plain fallback layout, because the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None) or path in _WARNED_NO_TEMPLATE:
        return
    _WARNED_NO_TEMPLATE.add(path)
    warnings.warn(f"{path}: the tokenizer has no chat template; prompts use the plain 'USER: ... ASSISTANT:' "
                  "layout (rdfast.prompts), which the model may not have been trained on", UserWarning, stacklevel=3)


def video_settings(path: str) -> dict | None:
    """The checkpoint's ``video_preprocessor_config.json`` as data, or None (HF video processors need torchvision).

    Args:
        path: a local reward-model directory.
    Returns:
        The parsed JSON, or None when the directory has no such file.
    """
    file = os.path.join(path, "video_preprocessor_config.json")
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def load_checkpoint(path: str, trained: RewardConfig, *, dtype, device, device_map=None, attn_implementation=None,
                    trust_remote_code: bool = False, allow_pickle: bool = False, base_model=None):
    """The checked parts of a reward model: (model, config, tokenizer, image_processor), model in eval mode on
    ``device`` (or spread by ``device_map``), frozen, LoRA adapters merged.

    Args:
        path: a local reward-model directory (its tokenizer and processor load from it).
        trained: its RewardConfig (``RewardConfig()`` for a plain checkpoint).
        dtype, device, device_map, attn_implementation, trust_remote_code: as ``RewardModel.from_pretrained``.
        allow_pickle: accept pickled weights (``check_weight_files``).
        base_model: overrides a LoRA adapter's recorded base model (``base_model_dir``).
    Raises:
        InputError for pickled weights, missing or non-finite weights, or a base model that cannot be found.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer  # heavy

    base_path = base_model_dir(path, trained.base_model, base_model)
    adapter = base_path != path
    check_weight_files(base_path, allow_pickle, "base model" if adapter else "reward model")
    common = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(base_path, **common)
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    image_processor = AutoImageProcessor.from_pretrained(path, **common)
    warn_without_chat_template(tokenizer, path)
    kwargs = dict(dtype=dtype, output_loading_info=True, use_safetensors=None if allow_pickle else True, **common)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if dtype == torch.float64:  # MoE experts' default grouped_mm kernel has no float64 (reference runs)
        kwargs["experts_implementation"] = "eager"
    model, info = AutoModelForImageTextToText.from_pretrained(base_path, **kwargs)
    check_missing(info["missing_keys"], base_path)  # tied weights are not listed as missing
    if adapter:
        model = _merged_adapter(model, path, allow_pickle)
    model = (model if device_map is not None else model.to(device)).eval()
    model.requires_grad_(False)  # a frozen judge: no weight gradients unless the user opts in
    check_finite(model.state_dict().items(), base_path)  # on the device: fast on a GPU
    speed_up_cpu(model, skip=(model.get_output_embeddings(),))  # CPU only; RDFAST_CPU_FAST=0 opts out
    return model, config, tokenizer, image_processor


def _merged_adapter(model, path: str, allow_pickle: bool):
    """``model`` with the LoRA adapter in ``path`` merged in, after checking the adapter has every tensor the
    adapted model expects, all finite."""
    from peft import PeftModel, get_peft_model_state_dict  # optional
    from safetensors import safe_open  # heavy

    check_weight_files(path, allow_pickle, "LoRA adapter")
    with warnings.catch_warnings():  # peft's own warning on missing keys becomes the error below
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        peft_model = PeftModel.from_pretrained(model, path)
    expected = get_peft_model_state_dict(peft_model)
    file = os.path.join(path, ADAPTER_FILE)
    if os.path.isfile(file):  # a pickled adapter (allow_pickle) is checked by its values only
        with safe_open(file, framework="pt") as fh:
            check_missing(set(expected) - set(fh.keys()), f"LoRA adapter {path}")
    check_finite(expected.items(), f"LoRA adapter {path}")
    return peft_model.merge_and_unload()
