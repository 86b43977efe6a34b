"""Tiny, randomly initialised diffusers pipelines (FLUX, SD3, SD 1.5 and SDXL with DDIM, Wan 2.1 text-to-video)
built from configs.

``tiny_pipeline_dir(generator)`` writes a directory laid out like a real diffusers checkpoint (model_index.json,
one folder per component, offline tokenizers), so code under test loads it through the same
``DiffusionPipeline.from_pretrained`` call as a real model. Nothing touches the network.

    >>> from rdfast.diffusion.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("flux")                  # 32x32 images, built once then cached
    >>> pipe = tiny_pipeline("flux", size="bench")    # 256x256, 64-channel VAE, 4 blocks (memory benchmark)
    >>> pipe = tiny_pipeline("wan")                   # 32x32 videos of 9 frames (DEFAULT_FRAMES)

The tokenizers are byte-level BPEs trained in-process (``tokenizers``) and wrapped in
``PreTrainedTokenizerFast``: CLIP-like (model_max_length 77, BOS/EOS added) and T5-like (EOS added; also Wan's
UMT5 tokenizer).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import torch

GENERATORS = ("flux", "sd3", "sd", "sdxl", "wan")
SIZES = ("tiny", "bench", "gpu")
BUILD_VERSION = 2  # bump whenever the built files change, so stale caches are not reused

_CORPUS = """a photo of a red fox in the snow; a blue car on a long street; a cat sitting on a chair;
an old house near the river at night; two dogs playing in green grass; a bowl of fruit on a wooden table;
a painting of a mountain under a bright sky; a small boat on the sea; a tree with yellow leaves;
a portrait of a smiling woman; a city skyline at sunset; a bird flying over water; a cup of coffee""".split(";")


def _bpe(bos: str | None, eos: str, pad: str, unk: str, max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # heavy
    from transformers import PreTrainedTokenizerFast  # heavy

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    special = [s for s in (pad, unk, bos, eos) if s]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([s.strip() for s in _CORPUS] * 10, trainer)
    # CLIP wraps a prompt in BOS ... EOS, T5 appends EOS; the text encoders pool / attend accordingly.
    single = (f"{bos} $A {eos}" if bos else f"$A {eos}")
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(s, tok.token_to_id(s)) for s in (bos, eos) if s])
    kwargs = dict(eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=max_length)
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def clip_tokenizer():
    """A CLIP-like tokenizer: BOS/EOS ``<|startoftext|>``/``<|endoftext|>``, model_max_length 77."""
    return _bpe("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", 77)


def t5_tokenizer():
    """A T5-like tokenizer: appends ``</s>``, pads with ``<pad>``."""
    return _bpe(None, "</s>", "<pad>", "<unk>", 512)


def _clip_text(tok, hidden=32, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # heavy

    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=projection or hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_text(tok, d_model):
    from transformers import T5Config, T5EncoderModel  # heavy

    config = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    return T5EncoderModel(config)


def _umt5_text(tok, d_model):
    from transformers import UMT5Config, UMT5EncoderModel  # heavy

    config = UMT5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.pad_token_id)
    return UMT5EncoderModel(config)


def _wan(bench: bool):
    """Wan 2.1's layout at toy width: a causal video VAE with 8x spatial and 4x temporal compression (so 9 frames
    are 3 latent frames), per-channel latent statistics, a (1, 2, 2)-patch transformer, UMT5, flow matching.
    bench: 64 px, 17 frames, a wider VAE and four transformer blocks (bench/refl_memory.py --pipeline wan)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel  # heavy

    tok = t5_tokenizer()
    z = 4
    # bench: Wan 2.1's channel multipliers (1, 2, 4, 4) at base width 16, so the decoder's activations dominate
    vae = AutoencoderKLWan(base_dim=16 if bench else 8, z_dim=z, dim_mult=[1, 2, 4, 4] if bench else [1, 1, 1, 1],
                           num_res_blocks=1, temperal_downsample=[False, True, True],
                           latents_mean=[-0.1, 0.2, 0.05, -0.3], latents_std=[1.5, 0.8, 1.2, 2.0],
                           scale_factor_temporal=4, scale_factor_spatial=8)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12 if not bench else 32, in_channels=z,
        out_channels=z, text_dim=32, freq_dim=32, ffn_dim=32 if not bench else 128, num_layers=2 if not bench else 4,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    # Wan 2.1's flow shift; Euler rather than its UniPC (rdfast samples Euler either way: see WanWrapper)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(tokenizer=tok, text_encoder=_umt5_text(tok, 32), vae=vae, scheduler=sched,
                       transformer=transformer)


def _vae(channels: tuple, latent_channels: int, **extra):
    from diffusers import AutoencoderKL  # heavy

    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         latent_channels=latent_channels, norm_num_groups=min(4, channels[0]), sample_size=32,
                         **extra)


def _build(generator: str, size: str, seed: int):
    from diffusers import (  # heavy
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)  # same seed -> same weights
    bench = size == "bench"
    if size == "gpu":
        if generator != "flux":
            raise ValueError("size='gpu' exists for generator='flux' only")
        return _flux_shaped()
    if generator == "flux":
        clip, t5 = clip_tokenizer(), t5_tokenizer()
        # bench: 4 VAE blocks (8x) with 64 channels, so 256 px images give 32x32 latents (256 packed tokens)
        vae = _vae((64,) * 4 if bench else (4,), 4 if bench else 1, shift_factor=0.1159, scaling_factor=0.3611,
                   use_quant_conv=False, use_post_quant_conv=False)
        latent = 4 if bench else 1
        # bench: 4 double + 4 single blocks, width 128: FLUX's shape (not its size), activations dominate weights
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * latent, num_layers=4 if bench else 1, num_single_layers=4 if bench else 1,
            attention_head_dim=32 if bench else 16, num_attention_heads=4 if bench else 2, joint_attention_dim=32,
            pooled_projection_dim=32, axes_dims_rope=[8, 12, 12] if bench else [4, 4, 8], guidance_embeds=True)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
        return FluxPipeline(scheduler=sched, vae=vae, text_encoder=_clip_text(clip), tokenizer=clip,
                            text_encoder_2=_t5_text(t5, 32), tokenizer_2=t5, transformer=transformer)
    if generator == "sd3":
        clip, t5 = clip_tokenizer(), t5_tokenizer()
        # two VAE blocks: the latent is half the image side (a one-block VAE makes 64 px images slow)
        vae = _vae((8, 16), 4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                   use_post_quant_conv=False)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=4, num_layers=4 if bench else 1, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
            out_channels=4)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        return StableDiffusion3Pipeline(
            scheduler=sched, vae=vae, transformer=transformer,
            text_encoder=_clip_text(clip, 32, projection=32), tokenizer=clip,
            text_encoder_2=_clip_text(clip, 32, projection=32), tokenizer_2=clip,
            text_encoder_3=_t5_text(t5, 64), tokenizer_3=t5)
    if generator == "sd":
        clip = clip_tokenizer()
        vae = _vae((8, 16), 4, scaling_factor=0.18215)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=4)
        # SD 1.5's scheduler settings, DDIM instead of PNDM (DDIM can be rewound for search)
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
        return StableDiffusionPipeline(vae=vae, text_encoder=_clip_text(clip), tokenizer=clip, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    if generator == "wan":
        return _wan(bench)
    if generator == "sdxl":
        from diffusers import StableDiffusionXLPipeline  # heavy

        clip = clip_tokenizer()
        vae = _vae((8, 16), 4, scaling_factor=0.13025)
        # cross-attention on both text encoders' hidden states (32 + 32); added embedding: 6 size ids x 8 + pooled 32
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=4, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
            transformer_layers_per_block=(1, 1))
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
        return StableDiffusionXLPipeline(vae=vae, text_encoder=_clip_text(clip),
                                         text_encoder_2=_clip_text(clip, 32, 32), tokenizer=clip, tokenizer_2=clip,
                                         unet=unet, scheduler=sched, add_watermarker=False)
    raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")


def _flux_shaped():
    """FLUX.1's block shapes (width 3072 = 24 heads x 128, FLUX's VAE) with 2 double + 4 single blocks and tiny text
    encoders: about 0.9 B random parameters, for GPU memory checks (512 px images)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # heavy

    clip, t5 = clip_tokenizer(), t5_tokenizer()
    vae = _vae((128, 256, 512, 512), 16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
               use_post_quant_conv=False)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=256,
                                         pooled_projection_dim=64, axes_dims_rope=[16, 56, 56], guidance_embeds=True)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=vae, text_encoder=_clip_text(clip, 64), tokenizer=clip,
                        text_encoder_2=_t5_text(t5, 256), tokenizer_2=t5, transformer=transformer)


#: the image side each tiny pipeline is meant to run at (pixels)
DEFAULT_SIDE = {("flux", "tiny"): 32, ("flux", "bench"): 256, ("flux", "gpu"): 512, ("sd3", "tiny"): 32,
                ("sd3", "bench"): 32, ("sd", "tiny"): 32, ("sd", "bench"): 32, ("sdxl", "tiny"): 32,
                ("sdxl", "bench"): 32, ("wan", "tiny"): 32, ("wan", "bench"): 64}
#: the number of frames each tiny video pipeline is meant to run at
DEFAULT_FRAMES = {("wan", "tiny"): 9, ("wan", "bench"): 17}


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("RDFAST_CACHE") or pathlib.Path.home() / ".cache" / "rdfast" / "tiny")


def tiny_pipeline_dir(generator: str, size: str = "tiny", seed: int = 0, cache_dir=None) -> pathlib.Path:
    """Directory of a tiny random diffusers pipeline (``generator`` in GENERATORS, ``size`` in SIZES), built once
    and cached.

    size="tiny": 32 px images, one or two blocks everywhere (tests; Wan: 9 frames). size="bench": FLUX at 256 px with
    a 64-channel four-block VAE and eight transformer blocks of width 128, Wan at 64 px and 17 frames with Wan
    2.1's VAE channel multipliers, so that activations dominate memory (bench/refl_memory.py).
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    spec = {"v": BUILD_VERSION, "generator": generator, "size": size}
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:10]
    path = root / f"pipe-{generator}-{size}-seed{seed}-{key}"
    if (path / "model_index.json").exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=root))
    try:
        _build(generator, size, seed).save_pretrained(tmp, safe_serialization=True)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, path)  # atomic: readers see nothing or a complete pipeline
        except OSError:  # another process finished first
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_pipeline(generator: str, size: str = "tiny", seed: int = 0, device="cpu", dtype=None):
    """A tiny diffusers pipeline loaded from ``tiny_pipeline_dir`` (float32 on CPU unless ``dtype``).

    size="gpu" (FLUX only) is built in memory on ``device`` and never cached: FLUX-shaped blocks,
    about 0.9 B parameters.
    """
    from diffusers import DiffusionPipeline  # heavy

    if size == "gpu":
        with torch.device(device):
            pipe = _build(generator, size, seed)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device) if dtype is None else pipe.to(device, dtype)

    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_dir(generator, size, seed), dtype=dtype or torch.float32,
                                             local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class torch_threads:
    """Context manager: run torch with ``n`` intra-op threads, restoring the previous count on exit.

    Tiny models gain nothing from several threads, and on a shared, busy CPU each parallel region waits for a
    descheduled thread, so one thread is much faster there (tests use it).
    """

    def __init__(self, n: int = 1):
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
