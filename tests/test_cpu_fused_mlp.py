"""rdfast.cpu_fused_mlp: MLP activations as oneDNN post-ops, against float64 references of transformers' own MLPs."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rdfast.cpu_fused_mlp import FusedMLPForward, fuse_mlp_activations, unfuse_mlps
from rdfast.cpu_packed import bf16_packable, fast_cpu_linears

pytest.importorskip("transformers")
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2MLP, VisionMlp  # noqa: E402

FP32 = 1e-5  # relative to the output's largest entry: GEMM summation order and the 1.702 scaling's rounding
BF16 = 1e-2  # bf16 hidden and output (8 mantissa bits) against float64, relative to the largest entry (seen: 3.8e-3)


def is_fused(m):
    return isinstance(m.__dict__.get("forward"), FusedMLPForward)


def two_layer(act, gen, dim=48, hidden=160):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return VisionMlp(dim, hidden, act)


def gated(act, gen, dim=48, hidden=160):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return Qwen2MLP(SimpleNamespace(hidden_size=dim, intermediate_size=hidden, hidden_act=act))


def reference(mlp, x):
    """The stock forward in float64 on a float64 copy."""
    with torch.no_grad():
        return copy.deepcopy(mlp).double()(x.double())


def close(got, want, tol):
    err = (got.double() - want).abs().max() / want.abs().max()
    assert err <= tol, f"relative error {err:.2e} > {tol}"


@pytest.mark.parametrize("make", [two_layer, gated], ids=["two_layer", "gated"])
@pytest.mark.parametrize("act", ["quick_gelu", "silu", "gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_forward_equals_float64_stock(make, act, dtype, gen):
    mlp = make(act, gen).to(dtype)
    x = torch.randn(3, 17, 48, generator=gen).to(dtype)
    want = reference(mlp, x)
    assert fast_cpu_linears(mlp) > 0
    fused = fuse_mlp_activations(mlp)
    if make is gated and act == "quick_gelu":
        assert fused == 0  # a scaled gate has no post-op form: stays stock
    elif dtype == torch.bfloat16 and not bf16_packable():
        assert fused == 0  # a CPU without oneDNN bf16 (seen: AMD EPYC here): stays stock, and still correct
    else:
        assert fused == 1 and is_fused(mlp)
    with torch.inference_mode():
        got = mlp(x)
        if fused:  # and the post-op path itself ran (no silent fallback to the stock forward)
            assert torch.equal(mlp.__dict__["forward"].fused(x), got)
    assert got.dtype == dtype and got.shape == want.shape
    close(got, want, FP32 if dtype == torch.float32 else BF16)


def test_a_forward_that_needs_gradients_takes_the_stock_path(gen):
    mlp = two_layer("quick_gelu", gen)
    fast_cpu_linears(mlp)
    assert fuse_mlp_activations(mlp) == 1
    x = torch.randn(4, 48, generator=gen, dtype=torch.float64).float().requires_grad_()
    out = mlp(x)
    assert out.grad_fn is not None
    ref_x = x.detach().double().requires_grad_()
    ref = copy.deepcopy(mlp).double()
    unfuse_mlps(ref)
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, [x, mlp.fc1.weight], g)
    want = torch.autograd.grad(ref(ref_x), [ref_x, ref.fc1.weight], g.double())
    for a, b in zip(got, want):
        close(a, b, FP32)


def test_a_module_whose_forward_is_not_the_assumed_one_stays_stock(gen):
    class Doubled(VisionMlp):  # the same attributes, another forward
        def forward(self, x):
            return 2 * super().forward(x)

    mlp = Doubled(48, 160, "silu")
    fast_cpu_linears(mlp)
    assert fuse_mlp_activations(mlp) == 0 and not is_fused(mlp)
    odd = VisionMlp(48, 160, "relu")  # an activation without a post-op here
    fast_cpu_linears(odd)
    assert fuse_mlp_activations(odd) == 0


def test_lora_wrapped_linears_take_the_stock_forward(gen):
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential()
    model.add_module("mlp", two_layer("quick_gelu", gen))
    fast_cpu_linears(model)
    assert fuse_mlp_activations(model) == 1
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["fc1"], init_lora_weights=False))
    x = torch.randn(5, 48, generator=gen)
    with torch.inference_mode():
        got = peft_model(x)
    close(got, reference(peft_model, x), FP32)  # LoRA's delta is in: fc1 is no longer a FastLinear


def test_scaled_copies_follow_weight_edits_and_survive_copies(gen, tmp_path):
    mlp = two_layer("quick_gelu", gen)
    fast_cpu_linears(mlp)
    fuse_mlp_activations(mlp)
    x = torch.randn(6, 48, generator=gen)
    with torch.no_grad():
        mlp(x)  # packs the scaled copies
        mlp.fc1.weight.data += torch.randn(mlp.fc1.weight.shape, generator=gen)  # bypasses the version counter
        mlp.fc2.weight.mul_(1.5)
        close(mlp(x), reference(mlp, x), FP32)
        copied = copy.deepcopy(mlp)
        torch.save(mlp, tmp_path / "whole.pt")
        loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
        for other in (copied, loaded):
            assert is_fused(other) and other.__dict__["forward"].module is other
            close(other(x), reference(mlp, x), FP32)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "internvl", "qwen3_5"])
def test_loaded_models_fuse_their_mlps_and_restore_undoes_it(family):
    from rdfast import RewardModel, cpu_speed
    from rdfast.testing import tiny_checkpoint

    rm = RewardModel.from_pretrained(tiny_checkpoint(family), device="cpu")
    mlps = [m for n, m in rm.model.named_modules() if n.endswith(".mlp") and not isinstance(m, nn.Sequential)]
    assert mlps and all(is_fused(m) for m in mlps)
    cpu_speed.restore(rm.model)
    assert not any(is_fused(m) for m in rm.model.modules())
