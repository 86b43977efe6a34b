"""rdfast.cpu_speed against the stock forwards: scores, gradients, the fallback without oneDNN, stale weights, bf16."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdfast import cpu_packed, cpu_speed
from rdfast.cpu_packed import FastLinear, fast_cpu_linears
from rdfast.cpu_speed import PatchConv2d, PatchConv3d, patch_convs_as_matmul
from rdfast.testing import random_images, tiny_checkpoint

PROMPTS = ["a red circle", "two blue squares on a table", "a green triangle above a cat"]
FP32 = 1e-5   # log P(yes), float32 fast path against the stock one: GEMM summation order only
BF16 = 1e-2   # log P(yes), bfloat16 model against float32: bf16 keeps 8 mantissa bits


def seed_of(gen):
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def fresh_rm(family, **kwargs):
    """A model of its own (tests here switch its modules back and forth; conftest's cache is shared)."""
    from rdfast import RewardModel

    return RewardModel.from_pretrained(tiny_checkpoint(family), device="cpu", **kwargs)


def switched(model) -> dict:
    kinds = (FastLinear, PatchConv2d, PatchConv3d)
    return {k.__name__: sum(type(m) is k for m in model.modules()) for k in kinds}


def stock_and_fast(rm, fn):
    """fn() with the stock modules, then with the fast ones (as loaded)."""
    cpu_speed.restore(rm.model)
    assert sum(switched(rm.model).values()) == 0
    stock = fn()
    cpu_speed.speed_up_cpu(rm.model, skip=(rm.model.get_output_embeddings(),))
    return stock, fn()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "internvl"])
def test_fast_path_is_on_by_default_and_scores_as_stock(family, gen):
    rm = fresh_rm(family)
    counts = switched(rm.model)
    assert counts["FastLinear"] > 0 and counts["PatchConv2d"] + counts["PatchConv3d"] == 1, counts
    assert type(rm.model.get_output_embeddings()) is nn.Linear  # rdfast's head reads it directly
    seed = seed_of(gen)
    images1, images2 = random_images(3, seed=seed), random_images(3, seed=seed + 1)
    for fn in (lambda: rm.score(images=images1, prompts=PROMPTS),
               lambda: rm.compare(images1=images1, images2=images2, prompts=PROMPTS)):
        stock, fast = stock_and_fast(rm, fn)
        torch.testing.assert_close(fast.double().log(), stock.double().log(), atol=FP32, rtol=0)


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv("RDFAST_CPU_FAST", "0")
    rm = fresh_rm("qwen2_vl")
    assert sum(switched(rm.model).values()) == 0


def test_linears_stay_stock_when_packed_copies_would_not_fit(monkeypatch):
    monkeypatch.setattr(cpu_speed, "free_memory_bytes", lambda: 1e3)
    rm = fresh_rm("qwen2_vl")
    assert switched(rm.model) == {"FastLinear": 0, "PatchConv2d": 0, "PatchConv3d": 1}


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_gradients_to_pixels_and_lora_weights_match_stock(family, gen):
    from peft import LoraConfig, get_peft_model

    rm = fresh_rm(family)
    torch.manual_seed(seed_of(gen))
    rm.model = get_peft_model(rm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "fc1"],
                                                   init_lora_weights=False))
    lora = {n: p for n, p in rm.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(isinstance(m, FastLinear) for n, m in rm.model.named_modules() if n.endswith("base_layer"))
    images = random_images(2, seed=seed_of(gen), kind="tensor")

    def grads():
        pixels = [im.clone().requires_grad_() for im in images]
        rm.model.zero_grad()
        rm.compare(images1=pixels[:1], images2=pixels[1:], prompts=PROMPTS[:1]).log().sum().backward()
        return [p.grad for p in pixels] + [lora[n].grad.clone() for n in sorted(lora)]

    stock, fast = stock_and_fast(rm, grads)
    assert all(g.abs().sum() > 0 for g in stock)
    for s, f in zip(stock, fast):
        torch.testing.assert_close(f, s, atol=FP32, rtol=FP32)


def test_linear_fast_forward_and_backward_equal_f_linear(gen):
    lin = nn.Linear(48, 40)
    assert fast_cpu_linears(lin) == 1 and type(lin) is FastLinear
    x = torch.randn(3, 7, 48, generator=gen, requires_grad=True)
    out = lin(x)
    ref_x = x.detach().clone().requires_grad_()
    ref = F.linear(ref_x, lin.weight, lin.bias)
    torch.testing.assert_close(out, ref, atol=FP32, rtol=FP32)
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, [x, lin.weight, lin.bias], g)
    want = torch.autograd.grad(ref, [ref_x, lin.weight, lin.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=FP32, rtol=FP32)


def test_packed_weight_follows_optimizer_steps_and_data_edits(gen):
    lin = nn.Linear(32, 24)
    fast_cpu_linears(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.randn(5, 32, generator=gen)
    lin(x).square().sum().backward()
    opt.step()  # an in-place update: the packed copy must not keep the old weight
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=FP32, rtol=FP32)
    lin.weight.data += torch.randn(lin.weight.shape, generator=gen)  # peft's merge: bypasses the version counter
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=FP32, rtol=FP32)
    lin.weight = nn.Parameter(torch.randn(24, 32, generator=gen))  # replaced outright
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=FP32, rtol=FP32)


def test_switched_modules_deepcopy_and_save_whole(gen, tmp_path):
    model = nn.Sequential(nn.Linear(16, 8), nn.Conv2d(3, 4, 2, stride=2))
    fast_cpu_linears(model)
    patch_convs_as_matmul(model)
    x, image = torch.randn(3, 16, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    with torch.no_grad():
        want = model[0](x), model[1](image)  # packs both weights
        copied = copy.deepcopy(model)
        torch.save(model, tmp_path / "whole.pt")
        loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
        for other in (copied, loaded):
            assert type(other[0]) is FastLinear and type(other[1]) is PatchConv2d
            assert torch.equal(other[0](x), want[0]) and torch.equal(other[1](image), want[1])


def test_without_the_onednn_ops_linears_stay_plain(monkeypatch, gen):
    lin = nn.Linear(16, 8)
    fast_cpu_linears(lin)  # switched while the ops exist, then they vanish (another torch build)
    monkeypatch.setattr(cpu_packed, "_MKLDNN_OPS", ("_no_such_reorder", "_no_such_linear"))
    assert cpu_packed._mkldnn_ops() is None
    x = torch.randn(4, 16, generator=gen)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    other = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    assert fast_cpu_linears(other) == 0 and all(type(m) is nn.Linear for m in other)
    rm = fresh_rm("qwen2_vl")  # the model still loads and scores, with its patch convolution switched
    assert switched(rm.model) == {"FastLinear": 0, "PatchConv2d": 0, "PatchConv3d": 1}
    assert torch.isfinite(rm.score(images=random_images(1, seed=seed_of(gen)), prompts=PROMPTS[:1])).all()


@pytest.mark.parametrize("shape,kernel", [((4, 3, 2, 14, 14), (2, 14, 14)),   # Qwen: one patch per row
                                          ((2, 3, 4, 28, 42), (2, 14, 14)),    # several patches per input
                                          ((2, 3, 56, 42), (14, 14)),          # InternVL-like Conv2d
                                          ((2, 3, 30, 44), (14, 14))])         # remainder: conv drops it
def test_patch_convolution_as_matmul_equals_conv(shape, kernel, gen):
    conv = (nn.Conv3d if len(kernel) == 3 else nn.Conv2d)(3, 16, kernel_size=kernel, stride=kernel)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    ref = conv(x)
    assert patch_convs_as_matmul(conv) == 1
    out = conv(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=FP32, rtol=FP32)
    g = torch.randn(ref.shape, generator=gen)
    for a, b in zip(torch.autograd.grad(out, [x, conv.weight], g), torch.autograd.grad(ref, [x, conv.weight], g)):
        torch.testing.assert_close(a, b, atol=FP32, rtol=FP32)


def test_other_convolutions_are_left_alone():
    convs = nn.Sequential(nn.Conv2d(3, 8, 3, stride=3, padding=1), nn.Conv2d(3, 8, 3, stride=1),
                          nn.Conv1d(4, 4, 2, stride=2), nn.Conv2d(4, 8, 2, stride=2, groups=2))
    assert patch_convs_as_matmul(convs) == 0


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_bfloat16_logprobs_and_ranking_follow_float32(family, gen):
    """bf16 mode against fp32 on fresh random inputs: log P(yes) within 1e-2; every pair of candidates whose fp32
    log P differ by more than twice that keeps its order."""
    fp32, bf16 = fresh_rm(family), fresh_rm(family, dtype=torch.bfloat16)
    assert switched(bf16.model)["FastLinear"] > 0
    seed = seed_of(gen)
    images = random_images(8, seed=seed)
    prompts = [PROMPTS[k % 3] for k in range(8)]
    a = fp32.score(images=images, prompts=prompts).double().log()
    b = bf16.score(images=images, prompts=prompts).double().log()
    assert b.dtype == torch.float64 and (a - b).abs().max() <= BF16, (a - b).abs().max()
    gap = a[:, None] - a[None, :]
    clear = gap.abs() > 2 * BF16
    assert torch.equal(torch.sign(gap[clear]), torch.sign((b[:, None] - b[None, :])[clear]))
