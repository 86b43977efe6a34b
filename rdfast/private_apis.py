"""Every private third-party API rdfast relies on, in one table: underscore names, undocumented attributes and
parameters, and methods rdfast patches. A new diffusers / transformers / torch release can move any of them without
notice; ``tests/test_private_apis.py`` checks that each one still exists in the installed versions (it does not pin
versions).

A row is ``(module, path, why)``: ``module`` is imported, then ``path`` is followed attribute by attribute. The last
part of ``path`` may also name

- an instance attribute of a class (one set in ``__init__`` or used by the class's own methods, so not on the class
  itself): found as ``self.<name>`` in the source of the class or one of its bases;
- a parameter of a function or method: found in its signature.

Add a row wherever rdfast starts to use such an API, and name the rdfast file that uses it in ``why``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import NamedTuple


class PrivateAPI(NamedTuple):
    module: str  # importable module path
    path: str    # attribute path inside it
    why: str     # what rdfast uses it for, and where


_FLUX = "diffusers.pipelines.flux.pipeline_flux"
_SDXL = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl"
_WAN_VAE = "diffusers.models.autoencoders.autoencoder_kl_wan"
_QWEN3_VL = "transformers.models.qwen3_vl.modeling_qwen3_vl"
_QWEN3_VL_MOE = "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe"
_PATCHED = "patched per instance in VAE decoders for per-submodule activation checkpointing (matched by class name; "

PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    # ---- transformers: the scoring core (rdfast/engine.py, families/, attention.py) ------------------------
    PrivateAPI("transformers.cache_utils", "DynamicCache.layers",
               "a shared prefix's per-layer keys and values, expanded to each suffix batch (families/base.py)"),
    PrivateAPI("transformers.cache_utils", "DynamicLayer.keys", "the prefix keys read per layer (families/base.py)"),
    PrivateAPI("transformers.cache_utils", "DynamicLayer.values", "the prefix values read per layer (families/base.py)"),
    PrivateAPI("transformers.configuration_utils", "PretrainedConfig._attn_implementation",
               "switching the language model to rdfast's varlen attention (attention.py install)"),
    PrivateAPI("transformers", "AttentionInterface._global_mapping",
               "registering the varlen attention function once (attention.py install)"),
    PrivateAPI("transformers.integrations.sdpa_attention", "sdpa_attention_forward",
               "unpacked calls fall through to sdpa unchanged (attention.py)"),
    PrivateAPI("transformers.masking_utils", "ALL_MASK_ATTENTION_FUNCTIONS",
               "the sdpa mask builder reused for the varlen implementation (attention.py install)"),
    PrivateAPI("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl", "smart_resize",
               "Qwen2-VL's target image size, from the torchvision-free processor module (families/qwen2_vl.py)"),
    PrivateAPI(_QWEN3_VL, "Qwen3VLTextModel.forward.visual_pos_masks",
               "where the deepstack features go, per forward of a prefix or suffix batch (families/qwen3_vl.py)"),
    PrivateAPI(_QWEN3_VL, "Qwen3VLTextModel.forward.deepstack_visual_embeds",
               "the per-layer deepstack features handed to the language model (families/qwen3_vl.py)"),
    PrivateAPI(_QWEN3_VL_MOE, "Qwen3VLMoeTextModel.forward.visual_pos_masks", "as for Qwen3-VL, in the MoE variant"),
    PrivateAPI(_QWEN3_VL_MOE, "Qwen3VLMoeTextModel.forward.deepstack_visual_embeds",
               "as for Qwen3-VL, in the MoE variant"),
    PrivateAPI(_QWEN3_VL, "BaseModelOutputWithDeepstackFeatures.deepstack_features",
               "get_image_features' per-layer features: split per image in 5.24, whole in 5.17 (families/qwen3_vl.py)"),
    PrivateAPI("transformers.models.qwen3_vl.video_processing_qwen3_vl", "smart_resize",
               "Qwen3-VL's video frame size, which counts the frames (families/qwen3_vl.py)"),
    # Qwen3.5's hybrid cache (families/qwen3_5.py expand_cache): the same in transformers 5.17, 5.24 and 5.25 (5.24
    # adds Cache.get_conv_state / get_recurrent_state, unused so that 5.17 works; 5.24's LinearAttentionLayer
    # lacks batch_repeat_interleave, unused too); versions outside qwen3_5.HYBRID_PREFIX_TESTED run unshared
    PrivateAPI("transformers.cache_utils", "Cache.update_conv_state",
               "seeding each suffix batch's cache with the prefix's window (families/qwen3_5.py)"),
    PrivateAPI("transformers.cache_utils", "LinearAttentionLayer.update_conv_state.conv_kernel_size",
               "the window length a seeded conv state keeps (families/qwen3_5.py)"),
    PrivateAPI("transformers.cache_utils", "LinearAttentionLayer.update_recurrent_state",
               "overridden per suffix cache to replace, not copy into, the state (families/qwen3_5.py)"),
    PrivateAPI("transformers.cache_utils", "LinearAttentionLayer.is_recurrent_states_initialized",
               "set by that override (families/qwen3_5.py)"),
    PrivateAPI("transformers.cache_utils", "Cache.update_recurrent_state",
               "seeding each suffix batch's cache with the prefix's recurrent state (families/qwen3_5.py)"),
    PrivateAPI("transformers.cache_utils", "LinearAttentionLayer.conv_states",
               "a prefix's convolution window, read per linear layer (families/qwen3_5.py; zeroed in a test)"),
    PrivateAPI("transformers.cache_utils", "LinearAttentionLayer.recurrent_states",
               "a prefix's recurrent state, read per linear layer (families/qwen3_5.py; zeroed in a test)"),
    PrivateAPI("transformers.models.qwen3_5.modeling_qwen3_5", "Qwen3_5GatedDeltaNet.A_log",
               "set to slow decay in the tiny checkpoint (testing.py _long_memory)"),
    PrivateAPI("transformers.models.qwen3_5.modeling_qwen3_5", "Qwen3_5GatedDeltaNet.dt_bias",
               "set to slow decay in the tiny checkpoint (testing.py _long_memory)"),
    PrivateAPI("transformers.models.got_ocr2.image_processing_pil_got_ocr2", "get_optimal_tiled_canvas",
               "InternVL's tile grid, from the torchvision-free processor module (families/internvl.py)"),
    # ---- diffusers: pipeline internals (rdfast/diffusion/pipelines/) ------------------------------------------
    PrivateAPI(_FLUX, "calculate_shift",
               "the resolution-dependent timestep shift mu, set as FluxPipeline.__call__ sets it (flux.py; sd3.py "
               "with dynamic shifting)"),
    PrivateAPI(_FLUX, "FluxPipeline._prepare_latent_image_ids", "positions of FLUX's packed latent tokens (flux.py)"),
    PrivateAPI(_FLUX, "FluxPipeline._pack_latents", "VAE latents -> FLUX's packed 2x2 tokens (flux.py encode_images)"),
    PrivateAPI(_FLUX, "FluxPipeline._unpack_latents", "packed tokens -> VAE latents before decoding (flux.py)"),
    PrivateAPI(_SDXL, "StableDiffusionXLPipeline._get_add_time_ids", "SDXL's size and crop conditioning (sdxl.py)"),
    # ---- diffusers: VAE internals (rdfast/diffusion/pipelines/) --------------------------------------------------
    PrivateAPI("diffusers.models.autoencoders.autoencoder_kl", "AutoencoderKL.use_tiling",
               "set per decode from tile=True/False (base.py decode)"),
    PrivateAPI(_WAN_VAE, "AutoencoderKLWan.use_tiling", "set per decode from tile=True/False (wan.py decode)"),
    PrivateAPI(_WAN_VAE, "AutoencoderKLWan._decode",
               "wan.py _decode_framewise repeats its loop over latent frames (no tiling) with one activation "
               "checkpoint per frame: a change to this loop must be mirrored there"),
    PrivateAPI(_WAN_VAE, "AutoencoderKLWan.post_quant_conv", "the loop's first, frame-local step (wan.py)"),
    PrivateAPI(_WAN_VAE, "WanDecoder3d.forward.feat_cache",
               "the causal convolutions' frame caches, passed in and out of each latent frame's decode as tensors "
               "(wan.py _wan_frame; the string 'Rep' marks a first-chunk cache)"),
    PrivateAPI(_WAN_VAE, "WanDecoder3d.forward.feat_idx", "the running index into feat_cache (wan.py _wan_frame)"),
    PrivateAPI(_WAN_VAE, "WanDecoder3d.forward.first_chunk", "marks the first latent frame (wan.py _wan_frame)"),
    PrivateAPI(_WAN_VAE, "WanCausalConv3d", "counted by class name to size the cache layout (wan.py)"),
    PrivateAPI("diffusers.models.autoencoders.vae", "Decoder.gradient_checkpointing",
               "turned off under rdfast's finer checkpointing: nesting both recomputes every block twice (vae.py)"),
    PrivateAPI("diffusers.models.resnet", "ResnetBlock2D.forward", _PATCHED + "vae.py)"),
    PrivateAPI("diffusers.models.upsampling", "Upsample2D.forward", _PATCHED + "vae.py)"),
    PrivateAPI("diffusers.models.attention_processor", "Attention.forward", _PATCHED + "vae.py)"),
    # ---- diffusers: scheduler state read as plain tensors (rdfast/diffusion/sampler.py Schedule) -------------------
    PrivateAPI("diffusers.schedulers.scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler.sigmas",
               "the flow noise levels of every step, the final one included"),
    PrivateAPI("diffusers.schedulers.scheduling_ddim", "DDIMScheduler.alphas_cumprod", "alpha_bar per timestep"),
    PrivateAPI("diffusers.schedulers.scheduling_ddim", "DDIMScheduler.final_alpha_cumprod",
               "the level after DDIM's last step"),
    PrivateAPI("diffusers.schedulers.scheduling_ddpm", "DDPMScheduler.alphas_cumprod", "alpha_bar per timestep"),
    PrivateAPI("diffusers.schedulers.scheduling_ddpm", "DDPMScheduler.previous_timestep", "DDPM's step spacing"),
    # ---- transformers, used by rdfast/diffusion/reward.py ----------------------------------------------------------
    PrivateAPI("transformers.modeling_layers", "GradientCheckpointingLayer.gradient_checkpointing",
               "switched on in the frozen reward model's layers for one backward (activation_checkpointing)"),
    PrivateAPI("transformers.modeling_layers", "GradientCheckpointingLayer._gradient_checkpointing_func",
               "the checkpoint function those layers call; set and restored by activation_checkpointing"),
    # ---- torch: oneDNN linears on CPU (rdfast/cpu_packed.py; plain F.linear where they are absent) -----------------
    PrivateAPI("torch", "ops.mkldnn._reorder_linear_weight", "packs a linear's weight for oneDNN (cpu_packed.py)"),
    PrivateAPI("torch", "ops.mkldnn._linear_pointwise", "the oneDNN linear on a packed weight (cpu_packed.py)"),
    PrivateAPI("torch", "ops.mkldnn._linear_pointwise.binary",
               "the oneDNN linear times another tensor, a gated MLP's product (cpu_fused_mlp.py; stock forward if absent)"),
    PrivateAPI("torch", "ops.mkldnn._is_mkldnn_bf16_supported", "whether bf16 weights can be packed (cpu_packed.py)"),
    # ---- torch, used by bench/refl_memory.py ------------------------------------------------------------------------
    PrivateAPI("torch.utils._python_dispatch", "TorchDispatchMode",
               "TensorPeak counts live tensor bytes on any device"),
    PrivateAPI("torch.utils._pytree", "tree_flatten", "TensorPeak walks each operator's outputs"),
)


def lookup(module: str, path: str):
    """The object a ``PrivateAPI`` row names, or AttributeError / ImportError when it no longer exists.

    Args:
        module: an importable module path, e.g. ``"diffusers.pipelines.flux.pipeline_flux"``.
        path: a dotted attribute path inside it, e.g. ``"FluxPipeline._pack_latents"``; its last part may be an
            instance attribute of a class or a parameter of a function (see the module docstring).

    Returns:
        the attribute itself; for an instance attribute, the class whose source uses it; for a parameter, its
        ``inspect.Parameter``.
    """
    obj = importlib.import_module(module)
    parts = path.split(".")
    for i, name in enumerate(parts):
        last = i == len(parts) - 1
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif last and inspect.isclass(obj):
            owners = [c for c in obj.__mro__ if c.__module__ != "builtins" and f"self.{name}" in _source(c)]
            if not owners:
                raise AttributeError(f"{module}.{path}: no 'self.{name}' in {obj.__name__} or its bases")
            obj = owners[0]
        elif last and callable(obj) and name in inspect.signature(obj).parameters:
            obj = inspect.signature(obj).parameters[name]
        else:
            raise AttributeError(f"{module}.{path}: {name!r} not found")
    return obj


def _source(cls) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # no source file (compiled or built-in): the attribute cannot be confirmed there
        return ""
