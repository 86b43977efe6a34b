"""rdfast.ops.token_logprobs: every backend against a float64 reference on the same fresh random inputs.

Triton runs on CPU only under TRITON_INTERPRET=1, which must be set before triton is imported, so the
Triton cases run in a child pytest process with that variable set (``test_triton_interpreter``); the
child runs only them. Compiled Triton on a GPU is covered by the ``cuda`` cases, skipped without CUDA.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from rdfast import ops

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CPP = ops._cpp_module() is not None
CUDA = torch.cuda.is_available()
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}

# In the interpreter child only the Triton cases run; in the parent they are delegated to the child.
_interp_only = pytest.mark.skipif(not INTERPRET, reason="runs in the TRITON_INTERPRET=1 child (test_triton_interpreter)")
_not_in_child = pytest.mark.skipif(INTERPRET, reason="the TRITON_INTERPRET=1 child runs only the Triton cases")
BACKENDS = [
    pytest.param("torch", marks=_not_in_child),
    pytest.param("cpp", marks=[_not_in_child, pytest.mark.skipif(not HAS_CPP, reason="rdfast._C not built")]),
    pytest.param("triton", marks=[_interp_only, pytest.mark.skipif(not HAS_TRITON, reason="no triton")]),
]
SUPPORTED = {"torch": set(TOL), "triton": set(TOL), "cpp": {torch.float32, torch.bfloat16}}

# (B, H, V, K, per_row): nothing a multiple of a block size; K from 1 to 4; V=2100 spans several
# vocabulary slices/chunks in every backend.
SHAPES = [(1, 77, 1003, 1, False), (5, 77, 1003, 2, True), (2, 130, 517, 4, False), (7, 33, 2100, 3, True),
          (70, 24, 1100, 2, False)]  # B=70: more than one block of rows in every backend


@pytest.fixture(autouse=True)
def _small_torch_chunks(monkeypatch):
    monkeypatch.setattr(ops, "_TORCH_CHUNK_ELEMENTS", 1)  # 256-row chunks: exercise the chunked path


def make_inputs(B, H, V, K, per_row, dtype, bias=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * (3.0 / H**0.5)).to(dtype)  # logits of a few units
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    ids = torch.randint(0, V, (B, K) if per_row else (K,), generator=g)
    if K >= 2:  # repeated ids must add up in the gradient
        ids[..., 1] = ids[..., 0]
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(hidden), to(weight), to(b), to(ids)


def reference(hidden, weight, ids, bias=None):
    """float64 full-logits reference; differentiable."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    lse = torch.logsumexp(z, dim=1)
    ids = ids.expand(hidden.shape[0], -1) if ids.dim() == 1 else ids
    return z.gather(1, ids.to(z.device)) - lse[:, None], lse


def skip_unsupported(backend, dtype):
    if dtype not in SUPPORTED[backend]:
        pytest.skip(f"{backend} does not run {dtype}")


def close(actual, expected, tol, scale=False):
    """max |actual - expected| <= tol (times max(1, max |expected|) for gradients, which are rounded to the dtype)."""
    err = (actual.double() - expected.double()).abs().max().item()
    bound = tol * (max(1.0, expected.abs().max().item()) if scale else 1.0)
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%dH%dV%dK%d%s" % (*s[:4], "row" if s[4] else ""))
def test_forward_matches_float64(backend, dtype, shape):
    skip_unsupported(backend, dtype)
    hidden, weight, bias, ids = make_inputs(*shape, dtype)
    logp, lse = ops.token_logprobs(hidden, weight, ids, bias=bias, backend=backend)
    ref_logp, ref_lse = reference(hidden, weight, ids, bias)
    assert logp.dtype == lse.dtype == torch.float32
    assert logp.shape == ref_logp.shape and lse.shape == ref_lse.shape
    close(logp, ref_logp, TOL[dtype])
    close(lse, ref_lse, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("through", ["both", "logp", "lse"])
@pytest.mark.parametrize("shape", [(6, 77, 1003, 3, True), (70, 24, 1100, 2, False)], ids=["B6", "B70"])
def test_gradients_match_float64(backend, dtype, through, shape):
    skip_unsupported(backend, dtype)
    if through != "both" and dtype != torch.float32:
        pytest.skip("single-output gradients are checked in fp32")
    B, K = shape[0], shape[3]
    inputs = make_inputs(*shape, dtype, seed=1)
    hidden, weight, bias = (t.clone().requires_grad_() for t in inputs[:3])
    ids = inputs[3]
    gen = torch.Generator().manual_seed(2)
    g, g_lse = torch.randn(B, K, generator=gen), torch.randn(B, generator=gen)
    g = g if through != "lse" else torch.zeros_like(g)
    g_lse = g_lse if through != "logp" else torch.zeros_like(g_lse)

    logp, lse = ops.token_logprobs(hidden, weight, ids, bias=bias, backend=backend)
    ((logp * g).sum() + (lse * g_lse).sum()).backward()
    ref = [t.detach().double().requires_grad_() for t in inputs[:3]]
    ref_logp, ref_lse = reference(*ref[:2], ids, ref[2])
    ((ref_logp * g.double()).sum() + (ref_lse * g_lse.double()).sum()).backward()
    for name, t, r in zip(("hidden", "weight", "bias"), (hidden, weight, bias), ref):
        assert t.grad is not None and t.grad.dtype == t.dtype, name
        close(t.grad, r.grad, TOL[dtype], scale=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V", [1, 2, 5, 9])
def test_tiny_vocab(backend, V):
    """Fewer vocabulary rows than threads x rows per register tile: ragged slices everywhere."""
    hidden, weight, bias, ids = make_inputs(3, 20, V, 2, True, torch.float32, seed=V)
    hidden.requires_grad_()
    logp, lse = ops.token_logprobs(hidden, weight, ids, bias=bias, backend=backend)
    (logp.sum() + lse.sum()).backward()
    h64 = hidden.detach().double().requires_grad_()
    ref_logp, ref_lse = reference(h64, weight, ids, bias)
    (ref_logp.sum() + ref_lse.sum()).backward()
    close(logp, ref_logp, 1e-5)
    close(lse, ref_lse, 1e-5)
    close(hidden.grad, h64.grad, 1e-5, scale=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend):
    """Logits of +-100s: the online logsumexp must rescale, and exp must neither overflow nor lose the max."""
    hidden, weight, bias, ids = make_inputs(3, 40, 1500, 2, True, torch.float32, seed=5)
    weight = weight * 40.0
    logp, lse = ops.token_logprobs(hidden, weight, ids, bias=bias, backend=backend)
    ref_logp, ref_lse = reference(hidden, weight, ids, bias)
    assert ref_lse.abs().max() > 100
    close(logp, ref_logp, 1e-4)  # fp32 logits of size 1e2-1e3 carry ~1e-5 relative rounding
    close(lse, ref_lse, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weight_gets_no_gradient(backend, monkeypatch):
    hidden, weight, _, ids = make_inputs(4, 33, 300, 2, False, torch.float32)
    hidden.requires_grad_()
    impl = ops._resolve_backend(backend, hidden)
    calls = []
    original = impl.backward

    def spy(*args):
        calls.append(args[-3:])  # need_dh, need_dw, need_db
        out = original(*args)
        assert out[1] is None and out[2] is None  # no dW / db buffer was allocated
        return out

    monkeypatch.setattr(impl, "backward", spy)
    logp, lse = ops.token_logprobs(hidden, weight, ids, backend=backend)
    (logp.sum() + lse.sum()).backward()
    assert calls == [(True, False, False)]
    assert weight.grad is None and hidden.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_only_gradient_and_noncontiguous_hidden(backend):
    base, weight, _, ids = make_inputs(5, 40, 700, 2, True, torch.float32)
    hidden = torch.stack([base, base], dim=1)[:, 1]  # [B, H] view with stride 2H, as from hidden_states[:, -1]
    assert not hidden.is_contiguous()
    weight.requires_grad_()
    logp, _ = ops.token_logprobs(hidden, weight, ids, backend=backend)
    logp.sum().backward()
    w64 = weight.detach().double().requires_grad_()
    reference(hidden, w64, ids)[0].sum().backward()
    close(weight.grad, w64.grad, 1e-5, scale=True)


@pytest.mark.skipif(not HAS_CPP or INTERPRET, reason="rdfast._C not built / interpreter child")
@pytest.mark.parametrize("isa", ops._cpp_module().supported_isas() if HAS_CPP else [])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_every_instruction_set_and_thread_count(isa, dtype, threads):
    C = ops._cpp_module()
    previous_isa, previous_threads = C.isa(), torch.get_num_threads()
    try:
        C.set_isa(isa)
        torch.set_num_threads(threads)
        inputs = make_inputs(7, 130, 2100, 3, True, dtype, seed=3)  # B > rows per register tile, H % 16 != 0
        hidden, weight, bias = (t.clone().requires_grad_() for t in inputs[:3])
        logp, lse = ops.token_logprobs(hidden, weight, inputs[3], bias=bias, backend="cpp")
        (logp.sum() * 0.5 + (lse * torch.linspace(-1, 1, 7)).sum()).backward()
    finally:
        C.set_isa(previous_isa)
        torch.set_num_threads(previous_threads)
    ref = [t.detach().double().requires_grad_() for t in inputs[:3]]
    ref_logp, ref_lse = reference(*ref[:2], inputs[3], ref[2])
    close(logp, ref_logp, TOL[dtype])
    close(lse, ref_lse, TOL[dtype])
    (ref_logp.sum() * 0.5 + (ref_lse * torch.linspace(-1, 1, 7).double()).sum()).backward()
    for t, r in zip((hidden, weight, bias), ref):
        close(t.grad, r.grad, TOL[dtype], scale=True)


@pytest.mark.skipif(not HAS_CPP or INTERPRET, reason="rdfast._C not built / interpreter child")
@pytest.mark.parametrize("isa", ops._cpp_module().supported_isas() if HAS_CPP else [])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_head", "trained_head"])
@pytest.mark.parametrize("B,H,V", [(40, 96, 2100), (3, 64, 5)], ids=["B40V2100", "B3V5"])
def test_cpp_bf16_whole_tiles(isa, threads, frozen, B, H, V):
    """H a multiple of 32, the shapes the AMX kernels take (logits and, for a frozen head, dh on tiles): an odd
    number of 16-row batch blocks (B=40), a vocabulary ending in a 16-row block and a ragged tail (V=2100) or
    smaller than one tile (V=5), bias, per-row ids with repeats; fresh random inputs against float64 with the
    bf16 tolerance."""
    C = ops._cpp_module()
    seed = int(torch.randint(0, 2**31 - 1, ()))
    print(f"seed {seed}")  # shown with a failure, to reproduce it
    inputs = make_inputs(B, H, V, 3, True, torch.bfloat16, seed=seed)
    previous_isa, previous_threads = C.isa(), torch.get_num_threads()
    try:
        C.set_isa(isa)
        torch.set_num_threads(threads)
        hidden = inputs[0].clone().requires_grad_()
        weight, bias = (inputs[1], inputs[2]) if frozen else (t.clone().requires_grad_() for t in inputs[1:3])
        logp, lse = ops.token_logprobs(hidden, weight, inputs[3], bias=bias, backend="cpp")
        (logp.sum() * 0.5 + (lse * torch.linspace(-1, 1, B)).sum()).backward()
    finally:
        C.set_isa(previous_isa)
        torch.set_num_threads(previous_threads)
    ref = [t.detach().double().requires_grad_() for t in inputs[:3]]
    ref_logp, ref_lse = reference(*ref[:2], inputs[3], ref[2])
    (ref_logp.sum() * 0.5 + (ref_lse * torch.linspace(-1, 1, B).double()).sum()).backward()
    close(logp, ref_logp, TOL[torch.bfloat16])
    close(lse, ref_lse, TOL[torch.bfloat16])
    close(hidden.grad, ref[0].grad, TOL[torch.bfloat16], scale=True)
    if not frozen:
        close(weight.grad, ref[1].grad, TOL[torch.bfloat16], scale=True)
        close(bias.grad, ref[2].grad, TOL[torch.bfloat16], scale=True)


@_not_in_child
def test_auto_picks_cpp_on_cpu_and_torch_otherwise():
    f32, f16 = torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.float16)
    assert ops._resolve_backend("auto", f32) is (ops._CppBackend if HAS_CPP else ops._TorchBackend)
    assert ops._resolve_backend("auto", f16) is ops._TorchBackend
    assert "torch" in ops.available_backends() and ("cpp" in ops.available_backends()) == HAS_CPP


@_not_in_child
def test_float64_runs_on_torch_and_stays_float64(gen):
    hidden = torch.randn(3, 77, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1003, 77, generator=gen, dtype=torch.float64)
    ids = torch.tensor([5, 900, 5])
    logp, lse = ops.token_logprobs(hidden, weight, ids)
    ref = torch.log_softmax(hidden @ weight.T, dim=-1)
    assert logp.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(logp, ref[:, ids], atol=1e-12, rtol=0)
    (g,) = torch.autograd.grad(logp.sum(), hidden)
    (g_ref,) = torch.autograd.grad(ref[:, ids].sum(), hidden)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=0)


@_not_in_child
def test_bad_inputs_raise_clear_errors():
    hidden, weight, _, ids = make_inputs(3, 8, 50, 2, False, torch.float32)
    f = ops.token_logprobs
    with pytest.raises(ValueError, match=r"\[0, V\)"):
        f(hidden, weight, torch.tensor([0, 50]))
    with pytest.raises(ValueError, match=r"\[0, V\)"):
        f(hidden, weight, torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        f(hidden, weight, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        f(hidden, weight, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="disagree on H"):
        f(hidden, weight[:, :7], ids)
    with pytest.raises(ValueError, match="2-D"):
        f(hidden[0], weight, ids)
    with pytest.raises(TypeError, match="float16"):
        f(hidden, weight.half(), ids)
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64"):
        f(hidden.int(), weight.int(), ids)
    with pytest.raises(RuntimeError, match="cpp.*float64"):
        f(hidden.double(), weight.double(), ids, backend="cpp")
    with pytest.raises(ValueError, match="is on"):
        f(hidden, weight.to("meta"), ids)
    with pytest.raises(ValueError, match="bias"):
        f(hidden, weight, ids, bias=torch.zeros(49))
    with pytest.raises(ValueError, match="unknown backend"):
        f(hidden, weight, ids, backend="cuda")
    with pytest.raises(RuntimeError, match="cpp.*unavailable"):
        f(hidden.half(), weight.half(), ids, backend="cpp")
    if not CUDA:
        with pytest.raises(RuntimeError, match="triton.*unavailable"):
            f(hidden, weight, ids, backend="triton")


@pytest.mark.skipif(INTERPRET or not HAS_TRITON, reason="this is the parent of the interpreter child / no triton")
def test_triton_interpreter():
    """Run this file's Triton cases under TRITON_INTERPRET=1 in a fresh process (kept under ~60 s)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "triton"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


# ---------------------------------------------------------------------------------------------------
# Compiled Triton on a GPU (skipped without CUDA)

cuda = pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 77, 1003, 1, False), (37, 300, 20011, 3, True), (70, 129, 5003, 4, True)],
                         ids=str)
def test_cuda_matches_float64(backend, dtype, shape):
    inputs = make_inputs(*shape, dtype, device="cuda", seed=4)
    hidden, weight, bias = (t.clone().requires_grad_() for t in inputs[:3])
    ids = inputs[3]
    logp, lse = ops.token_logprobs(hidden, weight, ids, bias=bias, backend=backend)
    g = torch.randn_like(logp)
    ((logp * g).sum() + lse.sum()).backward()
    ref = [t.detach().double().requires_grad_() for t in inputs[:3]]
    ref_logp, ref_lse = reference(*ref[:2], ids, ref[2])
    ((ref_logp * g.double()).sum() + ref_lse.sum()).backward()
    close(logp, ref_logp, TOL[dtype])
    close(lse, ref_lse, TOL[dtype])
    for t, r in zip((hidden, weight, bias), ref):
        close(t.grad, r.grad, TOL[dtype], scale=True)


@cuda
def test_cuda_auto_is_triton_and_memory_does_not_grow_with_vocab():
    assert ops._resolve_backend("auto", torch.zeros(1, device="cuda")).__name__.endswith("kernels.head")
    B, H = 8, 1024
    extra = []
    for V in (32768, 131072):
        hidden = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        weight = torch.randn(V, H, device="cuda", dtype=torch.bfloat16) * 0.03
        ids = torch.tensor([5, 7], device="cuda")
        ops.token_logprobs(hidden, weight, ids)  # compile outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logp, lse = ops.token_logprobs(hidden, weight, ids)
        (logp.sum() + lse.sum()).backward()
        torch.cuda.synchronize()
        extra.append(torch.cuda.max_memory_allocated() - base)
    assert extra[1] < B * 32768 * 4, extra  # far below one [B, V] fp32 buffer
