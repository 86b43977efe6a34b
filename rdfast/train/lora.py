"""Which weights LoRA adapts: the language model's projections, Linear modules and 3-D MoE expert parameters."""
from __future__ import annotations

from torch import nn

from .config import TrainConfig

#: a fused expert parameter and the projections it holds (Qwen3-VL MoE stores gate and up as one [E, 2I, H])
FUSED = {"gate_up_proj": ("gate_proj", "up_proj")}


def expert_parameters(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the language model's 3-D expert parameters [E, out, in] that ``targets`` name.

    Args:
        model: the transformers model.
        targets: projection names (``TrainConfig.lora_targets``); a fused parameter counts when any part is named.
    Returns:
        Full parameter names, sorted ([] for a dense model).
    """
    wanted = set(targets)
    return sorted(n for n, p in model.named_parameters()
                  if p.dim() == 3 and "language_model" in n
                  and (n.rsplit(".", 1)[-1] in wanted or wanted & set(FUSED.get(n.rsplit(".", 1)[-1], ()))))


def lora_config(model: nn.Module, config: TrainConfig):
    """The peft LoraConfig of a LoRA run on ``model``.

    Args:
        model: the transformers model (before ``get_peft_model``).
        config: the run's TrainConfig (``lora_targets``, ``lora_r``, ``lora_alpha``, ``lora_dropout``).
    Returns:
        A ``peft.LoraConfig``: Linear modules of the language model whose name is a target (the vision tower has
        modules with the same names), plus its 3-D expert parameters through ``target_parameters`` (MoE experts
        are not Linear modules; peft adapts each expert with its own rank-r pair).
    """
    from peft import LoraConfig  # optional

    modules = rf".*language_model.*\.({'|'.join(config.lora_targets)})"
    experts = expert_parameters(model, config.lora_targets)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=modules, target_parameters=experts or None, bias="none")
