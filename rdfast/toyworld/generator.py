"""The toy generator: a tiny FLUX pipeline (diffusers' own classes) whose parts fit the toy world.

Why this design (issue 13 measured that a pixel-space UNet is too slow on CPU and that a FLUX-like transformer on
4x4 pixel patches learns colours but not shapes in minutes):

- ``AutoencoderKL`` with three blocks (4x down), trained on renders first: 64x64x3 -> 16x16x4 latents, packed by
  FLUX into 8x8 = 64 tokens of 16 channels, each covering 8x8 pixels. The transformer then models 64 tokens of
  a smooth, compressed code instead of 256 raw-pixel patches.
- ``FluxTransformer2DModel`` (double- and single-stream blocks, rotary positions), trained by flow matching;
  no guidance embedding (one evaluation per step, no classifier-free guidance).
- Word-level tokenizers over the world's vocabulary (one token per word: count, colour, shape), and tiny
  ``CLIPTextModel`` / ``T5EncoderModel`` encoders left at their seeded random initialisation: a fixed,
  compositional featurisation; the transformer's own projections learn to read it. Sequences are 8 tokens.

Being a ``FluxPipeline``, it runs through ``rdfast.diffusion``'s FLUX wrapper unchanged (ReFL, Search over Paths,
Best-of-N, CUDA graphs), and saves and loads with ``save_pretrained`` / ``DiffusionPipeline.from_pretrained``.
"""
from __future__ import annotations

import math

import torch

from ..diffusion.pipelines import adapt
from ..diffusion.sampler import Sampler
from .world import COLOURS, COUNT_WORDS, SHAPES, SIZE

TEXT_TOKENS = 8  #: text sequence length (BOS/EOS and three words fit)
#: the flow-matching shift (sigma -> shift sigma / (1 + (shift - 1) sigma)), the same at training and sampling
SHIFT = 3.0
#: the default architecture; ``build_pipeline(**overrides)`` changes any of it
DEFAULTS = dict(vae_channels=(32, 64, 64), latent_channels=4, width=96, heads=4, double_layers=2, single_layers=4,
                text_width=32)


def vocabulary() -> list[str]:
    """Every word of the world's prompts: count words, colours, shapes and their plurals."""
    return list(COUNT_WORDS.values()) + list(COLOURS) + [w for s in SHAPES for w in (s, s + "s")]


def word_tokenizer(bos: str | None, eos: str, pad: str, unk: str):
    """A word-level ``PreTrainedTokenizerFast``: one id per world word, ``bos`` (if any) and ``eos`` added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors  # heavy
    from transformers import PreTrainedTokenizerFast  # heavy

    special = list(dict.fromkeys(s for s in (pad, unk, bos, eos) if s))  # CLIP pads with its EOS
    vocab = {w: i for i, w in enumerate(special + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}" if bos else f"$A {eos}", special_tokens=[(s, vocab[s]) for s in (bos, eos) if s])
    kwargs = dict(eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=TEXT_TOKENS)
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_vae(vae_channels=DEFAULTS["vae_channels"], latent_channels=DEFAULTS["latent_channels"]):
    """The toy autoencoder (untrained): 2 ** (len(vae_channels) - 1) times down, ``latent_channels`` channels."""
    from diffusers import AutoencoderKL  # heavy

    n = len(vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
                         mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False)


def build_pipeline(seed: int = 0, vae=None, **overrides):
    """A ``FluxPipeline`` for the toy world, randomly initialised from ``seed`` (``vae``: a trained one to use).

    overrides: any of DEFAULTS (vae_channels, latent_channels, width, heads, double_layers, single_layers,
    text_width).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # heavy
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # heavy

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown generator settings {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS, **overrides)
    torch.manual_seed(seed)
    clip = word_tokenizer("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<unk>")
    t5 = word_tokenizer(None, "</s>", "<pad>", "<unk>")
    tw = cfg["text_width"]
    clip_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip), hidden_size=tw, intermediate_size=2 * tw, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=TEXT_TOKENS, bos_token_id=clip.bos_token_id, eos_token_id=clip.eos_token_id,
        pad_token_id=clip.pad_token_id))
    t5_model = T5EncoderModel(T5Config(
        vocab_size=len(t5), d_model=tw, d_kv=tw // 2, d_ff=2 * tw, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=t5.pad_token_id, eos_token_id=t5.eos_token_id,
        decoder_start_token_id=t5.pad_token_id))
    vae = vae if vae is not None else build_vae(cfg["vae_channels"], cfg["latent_channels"])
    head_dim = cfg["width"] // cfg["heads"]
    rope = [head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8]  # (text, y, x), sums to head
    rope = [r - r % 2 for r in rope[1:]]
    rope = [head_dim - sum(rope)] + rope
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=cfg["double_layers"],
        num_single_layers=cfg["single_layers"], attention_head_dim=head_dim, num_attention_heads=cfg["heads"],
        joint_attention_dim=tw, pooled_projection_dim=tw, axes_dims_rope=rope, guidance_embeds=False)
    # a fixed shift for every size: dynamic shifting with base == max shift gives mu = log(SHIFT)
    mu = math.log(SHIFT)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=mu, max_shift=mu,
                                            time_shift_type="exponential")
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip_model, tokenizer=clip, text_encoder_2=t5_model,
                        tokenizer_2=t5, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    for module in (clip_model, t5_model, vae, transformer):  # built modules start in training mode (dropout)
        module.eval()
    return pipe


def shifted(u: torch.Tensor) -> torch.Tensor:
    """Uniform u in [0, 1] -> the shifted noise level the sampler's schedule uses (SHIFT u / (1 + (SHIFT - 1) u))."""
    return SHIFT * u / (1 + (SHIFT - 1) * u)


SAMPLE_STEPS = 16  #: Euler steps the toy's results are measured with


def sample(pipe, prompts, seeds, steps: int = SAMPLE_STEPS, batch: int = 64) -> torch.Tensor:
    """Images float32 [N, 3, 64, 64] in [0, 1] for prompts[i] (text or Prompt) from noise seeded by seeds[i],
    through rdfast.diffusion's FLUX wrapper and Sampler (no gradient). Sample i depends only on
    (prompts[i], seeds[i]), not on the batch it was drawn in."""
    texts = [str(p) for p in prompts]
    if len(texts) != len(seeds):
        raise ValueError(f"{len(texts)} prompts for {len(seeds)} seeds")
    wrapper = adapt(pipe)
    sampler = Sampler(wrapper.denoise, wrapper.schedule(steps, SIZE, SIZE), wrapper.evals_per_step, graphs=False)
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            chunk = range(start, min(start + batch, len(texts)))
            x = torch.cat([wrapper.noise(1, SIZE, SIZE, torch.Generator().manual_seed(int(seeds[i]))) for i in chunk])
            cond = wrapper.encode([texts[i] for i in chunk])
            _, x0 = sampler.run(x, 0, steps, cond)
            out.append(wrapper.decode(x0, SIZE, SIZE))
    return torch.cat(out)
