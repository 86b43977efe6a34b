"""Tiny, randomly initialised VLM checkpoints for tests, demos and benchmarks.

``tiny_checkpoint(family)`` writes a directory laid out like a real Hugging Face checkpoint (config.json,
model.safetensors, tokenizer files with the family's chat template, preprocessor_config.json), so code under
test loads it through the same ``from_pretrained`` calls as a real model. Nothing touches the network.

    >>> from rdfast.testing import tiny_checkpoint, random_images
    >>> path = tiny_checkpoint("qwen2_vl")          # built once, then cached
    >>> model = AutoModelForImageTextToText.from_pretrained(path)

Image processors: without torchvision, ``AutoImageProcessor.from_pretrained`` gives the PIL classes
(``Qwen2VLImageProcessorPil``, ``GotOcr2ImageProcessorPil``); with torchvision, the torchvision ones.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "internvl")
BUILD_VERSION = 1  # bump whenever the built files change, so stale caches are not reused

# Qwen2's added tokens, in the real checkpoints' id order (151643...); vision ones last.
_QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# InternVL3-hf = Qwen2.5 tokenizer + these (the real <IMG_CONTEXT> sits right after <img>, </img>).
_INTERNVL_SPECIAL = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
                     "<video>"]
# Named tokens InternVLProcessor reads from the tokenizer (tokenizer.start_image_token, ...), as in InternVL3-hf.
_INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}

# Qwen2-VL / Qwen2.5-VL chat template (as shipped with the real checkpoints).
_QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL chat template (the real Instruct checkpoints' for system/user turns): no default system turn.
_QWEN3_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3.5 (as its real template for system/user turns): the generation prompt opens a thinking block, or with
# enable_thinking=False an empty, closed one, after which the answer starts.
_QWEN3_5_TEMPLATE = _QWEN3_TEMPLATE.replace(
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is "
    "false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}")
_THINK = ["<think>", "</think>"]
# InternVL3-hf chat template (transformers' conversion script): no default system turn; the processor later
# expands each <IMG_CONTEXT> into <img> + <IMG_CONTEXT> * (image_seq_length * num_tiles) + </img>.
_INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

_TEMPLATES = {"qwen3_5": _QWEN3_5_TEMPLATE, "qwen3_5_moe": _QWEN3_5_TEMPLATE, "internvl": _INTERNVL_TEMPLATE}

# Qwen2's pre-tokenizer regex: letters never absorb a preceding newline, so "assistant\nyes" splits before "yes".
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")

_WORDS = """yes no Yes No YES NO image images better than quality aligned alignment prompt prompts Does Is Are
the a an of to in on and or with for is are was be this that these which what text description visual video videos
motion reference candidate first second left right score reward model answer question compare comparison more less
good bad best worse worst photo picture scene style color colour detail details object objects person people cat dog
red blue green bright dark natural realistic sharp blurry smooth frame frames generated generation follow follows
faithful faithfully caption captions overall aesthetic aesthetics consistent consistency temporal pairwise pointwise
please judge evaluate rate assistant user system helpful you are I it its there here from by at as not do does did
has have had will would should can could very well much many some any all each every other another same different
one two three four five six seven eight nine ten time day night water sky tree house city street car road mountain
river light shadow small large big little old new young long short high low under over between through into about
after before while during because when where who how why again only also just still even never always often""".split()

_SENTENCES = [
    "Does the image match the text description? yes",
    "Is the first image better than the second image? no",
    "Is the candidate video better aligned with the prompt than the reference video? Yes",
    "Does the motion of the video follow the prompt faithfully? No",
    "Compare the visual quality of the two images and answer yes or no.",
    "You are a helpful assistant. Please judge the overall aesthetic quality of the picture.",
    "The quick brown fox jumps over the lazy dog near the river at night.",
    "A red car drives down a long street in the old city under a bright blue sky.",
]


def _corpus():
    # Repeat the prompt words often enough that BPE merges each into a single token.
    for i in range(len(_WORDS)):
        yield " ".join(_WORDS[i:i + 12])
        yield "\n".join(_WORDS[i:i + 6])
    for _ in range(20):
        yield from _SENTENCES
        yield "\n".join(["yes", "no", "Yes", "No"])


def _tokenizer(family: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1536, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    special = _QWEN_SPECIAL + (_INTERNVL_SPECIAL if family == "internvl" else _THINK if family.startswith("qwen3_5") else [])
    tok.add_special_tokens(special)  # ids right after the BPE vocab, never split
    named = _INTERNVL_NAMED if family == "internvl" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=special[3:],  # everything but endoftext/im_start/im_end, as Qwen lists them
        chat_template=_TEMPLATES.get(family, _QWEN3_TEMPLATE if family.startswith("qwen3") else _QWEN_TEMPLATE),
        model_max_length=32768, **named,
    )


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _text_config(tok, **extra) -> dict:
    vocab = -(-len(tok) // 64) * 64  # pad up like real checkpoints (Qwen: 151936 > len(tokenizer))
    ids = dict(bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                tie_word_embeddings=False, **ids, **extra)


def _config_and_processor(family: str, tok, overrides: dict):
    """Returns (config dict, preprocessor_config dict, processor_config dict or None)."""
    overrides = dict(overrides)
    proc_over = overrides.pop("image_processor", {})
    tid = tok.convert_tokens_to_ids
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # head_dim 16 -> mrope_section sums to 8 (real: [16, 24, 24] for head_dim 128)
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        if family == "qwen2_vl":
            vision = dict(depth=2, embed_dim=64, hidden_size=64, mlp_ratio=2, num_heads=4)
        else:  # window_size 56 px = 2 merged units, so images above 56 px really use windowed attention
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                          fullatt_block_indexes=[1], window_size=56, tokens_per_second=2)
        vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        cfg = dict(model_type=family, text_config=_text_config(tok, rope_parameters=rope), vision_config=vision,
                   image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                   vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
                   tie_word_embeddings=False)
        cfg = _merge(cfg, overrides)
        v = cfg["vision_config"]
        proc = dict(image_processor_type="Qwen2VLImageProcessor",
                    processor_class="Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor",
                    min_pixels=56 * 56, max_pixels=28 * 28 * 16, patch_size=v["patch_size"],
                    temporal_patch_size=v["temporal_patch_size"], merge_size=v["spatial_merge_size"],
                    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                    do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                    resample=3)
        proc = _merge(proc, proc_over)
        proc["size"] = {"shortest_edge": proc["min_pixels"], "longest_edge": proc["max_pixels"]}
        return cfg, proc, None

    if family in ("qwen3_vl", "qwen3_vl_moe"):
        return _qwen3_vl(family, tok, overrides, proc_over)
    if family in ("qwen3_5", "qwen3_5_moe"):
        return _qwen3_5(family, tok, overrides, proc_over)
    if family != "internvl":
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    # 56 px tiles of 14 px patches: 4x4 patches, pixel shuffle 0.5 -> 4 tokens per tile
    vision = dict(model_type="internvl_vision", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, image_size=56, patch_size=14, attention_bias=True, use_qk_norm=False,
                  norm_type="layer_norm", hidden_act="gelu", layer_scale_init_value=0.1)
    cfg = dict(model_type="internvl", text_config=_text_config(tok, model_type="qwen2", rope_theta=1e6),
               vision_config=vision, image_token_id=tid("<IMG_CONTEXT>"), downsample_ratio=0.5,
               projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
               tie_word_embeddings=False)
    cfg = _merge(cfg, overrides)
    v = cfg["vision_config"]
    size, patch = _pair(v["image_size"]), _pair(v["patch_size"])
    seq = (size[0] // patch[0]) * (size[1] // patch[1]) * cfg["downsample_ratio"] ** 2
    if seq != int(seq) or overrides.get("image_seq_length", seq) != seq:
        raise ValueError(f"image_seq_length must be (image_size/patch_size)^2 * downsample_ratio^2 = {seq}")
    cfg["image_seq_length"] = int(seq)
    proc = dict(image_processor_type="GotOcr2ImageProcessor", processor_class="InternVLProcessor",
                size={"height": size[0], "width": size[1]}, crop_to_patches=True, min_patches=1, max_patches=6,
                image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],  # ImageNet, as InternVL3-hf
                do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                resample=3)
    proc = _merge(proc, proc_over)
    # Real InternVL-hf keeps image_seq_length in processor_config.json; InternVLProcessor itself needs
    # torchvision (its video processor), so this file is written by hand.
    return cfg, proc, {"image_seq_length": int(seq), "processor_class": "InternVLProcessor"}


def _qwen3_vl(family: str, tok, overrides: dict, proc_over: dict):
    """Qwen3-VL: 16 px patches, interleaved mrope, deepstack after the first two of three text layers; the MoE
    variant has 4 experts (2 per token) in every layer's MLP."""
    tid = tok.convert_tokens_to_ids
    # head_dim 16 -> 8 rotary frequencies split [4, 2, 2] (real: [24, 20, 20] of 64), interleaved
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = {**_text_config(tok, head_dim=16, rope_parameters=rope), "num_hidden_layers": 3}
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    vision = dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    cfg = dict(model_type=family, text_config=text, vision_config=vision, image_token_id=tid("<|image_pad|>"),
               video_token_id=tid("<|video_pad|>"), vision_start_token_id=tid("<|vision_start|>"),
               vision_end_token_id=tid("<|vision_end|>"), tie_word_embeddings=False)
    cfg = _merge(cfg, overrides)
    return cfg, _qwen3_processor(cfg["vision_config"], proc_over), None


def _qwen3_processor(vision: dict, proc_over: dict) -> dict:
    """The image processor config of Qwen3-VL and Qwen3.5, as the real preprocessor_config.json: the pixel
    range in ``size`` only, mean and std 0.5."""
    unit = vision["patch_size"] * vision["spatial_merge_size"]  # 32 px per merged token
    proc = dict(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen3VLProcessor",
                size={"shortest_edge": 2 * unit * unit, "longest_edge": 16 * unit * unit},
                patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
                merge_size=vision["spatial_merge_size"], image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                resample=3)
    return _merge(proc, proc_over)


def _qwen3_5(family: str, tok, overrides: dict, proc_over: dict):
    """Qwen3.5: hybrid text layers (Gated DeltaNet linear attention, full attention in the middle one), partial
    interleaved mrope, Qwen3-VL's 16 px vision tower without deepstack; the MoE variant has 4 routed experts (2 per
    token) and a gated shared expert in every layer's MLP."""
    tid = tok.convert_tokens_to_ids
    # head_dim 16, half of it rotary: 8 dims -> 4 frequencies split [2, 1, 1] (real: a quarter, [11, 11, 10] of 32)
    rope = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [2, 1, 1], "mrope_interleaved": True,
            "partial_rotary_factor": 0.5}
    text = {**_text_config(tok, head_dim=16, rope_parameters=rope), "num_hidden_layers": 3,
            "layer_types": ["linear_attention", "full_attention", "linear_attention"], "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
            "linear_num_value_heads": 4}
    if family == "qwen3_5_moe":  # Qwen3NextConfig-based: no dense intermediate_size
        del text["intermediate_size"]
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64)
    cfg = dict(model_type=family, text_config=text, vision_config=vision, image_token_id=tid("<|image_pad|>"),
               video_token_id=tid("<|video_pad|>"), vision_start_token_id=tid("<|vision_start|>"),
               vision_end_token_id=tid("<|vision_end|>"), tie_word_embeddings=False)
    cfg = _merge(cfg, overrides)
    return cfg, _qwen3_processor(cfg["vision_config"], proc_over), None


def _long_memory(model, gen) -> None:
    """Slow decay in every Gated DeltaNet layer (A in [0.005, 0.05], softplus(dt_bias) ~ 0.13), as trained
    checkpoints have: transformers' random init forgets within a token or two, so a dropped recurrent state
    would not show in the scores."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "A_log") and hasattr(module, "dt_bias"):
                module.A_log.copy_(torch.empty_like(module.A_log).uniform_(0.005, 0.05, generator=gen).log())
                module.dt_bias.fill_(-2.0)


def _pair(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)


def _build(family: str, seed: int, overrides: dict, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    tok = _tokenizer(family)
    cfg, proc, proc_cfg = _config_and_processor(family, tok, overrides)
    config = AutoConfig.for_model(**cfg)
    config.dtype = torch.float32
    torch.manual_seed(seed)  # same seed -> same weights
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if family.startswith("qwen3_5"):
        _long_memory(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(out)  # safetensors (the only format transformers 5 writes)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True))
    if proc_cfg is not None:
        (out / "processor_config.json").write_text(json.dumps(proc_cfg, indent=2, sort_keys=True))
    if family.startswith("qwen3"):  # Qwen3-VL ships its video processor's settings apart
        video = dict(video_processor_type="Qwen3VLVideoProcessor", processor_class="Qwen3VLProcessor",
                     size={"shortest_edge": 4096, "longest_edge": 32 * 32 * 64}, fps=2.0, min_frames=4,
                     max_frames=64, **{k: proc[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                                              "image_mean", "image_std")})
        (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True))


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("RDFAST_CACHE") or pathlib.Path.home() / ".cache" / "rdfast" / "tiny")


def tiny_checkpoint(family: str, cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
                    **overrides) -> pathlib.Path:
    """Path of a tiny random checkpoint of ``family`` (one of FAMILIES), built on first use and cached.

    ``overrides`` merge into the config dict (nested dicts merge, e.g. ``text_config={"num_hidden_layers": 4}``);
    the key ``image_processor`` merges into preprocessor_config.json instead (e.g. ``{"max_pixels": 28*28*64}``).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = json.dumps({"v": BUILD_VERSION, "overrides": overrides}, sort_keys=True, default=str)
    path = root / f"{family}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if (path / "config.json").exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=root))
    try:
        _build(family, seed, overrides, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a shared cache should stay readable
        try:
            os.replace(tmp, path)  # atomic: readers see nothing or a complete checkpoint
        except OSError:  # another process finished first (target exists and is not empty): use theirs
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def random_images(n: int, sizes=((56, 56), (84, 56), (56, 84), (112, 84)), seed: int = 0, kind: str = "pil"):
    """``n`` random RGB images cycling through ``sizes`` given as (width, height), like PIL's ``Image.size``.

    kind="pil": PIL RGB images; kind="tensor": float tensors [3, H, W] in [0, 1] (pass ``do_rescale=False`` to an
    HF image processor, which otherwise divides by 255 again). The default sizes are multiples of 28 within the
    tiny Qwen processors' pixel range, so Qwen2-VL's smart_resize leaves them unchanged.
    """
    import torch

    if kind not in ("pil", "tensor"):
        raise ValueError(f"kind must be 'pil' or 'tensor', not {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        x = torch.rand(3, h, w, generator=gen)
        if kind == "pil":
            from PIL import Image

            x = Image.fromarray((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")
        out.append(x)
    return out
