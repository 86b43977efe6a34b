"""The fused yes-token head: log-probabilities of a few tokens without materialising [B, V] logits.

One public entry, ``token_logprobs``. Three backends compute the same thing behind it, chosen in one
place (``_resolve_backend``):

- ``"triton"``: tiled kernels in ``rdfast.kernels.head`` (CUDA; CPU tensors only under TRITON_INTERPRET=1).
- ``"cpp"``: the OpenMP/SIMD extension ``rdfast._C`` (CPU, fp32 and bf16).
- ``"torch"``: plain PyTorch, chunked over the vocabulary so memory stays bounded.

Every backend provides ``forward(hidden, weight, bias, ids) -> (target_logits [B,K] fp32, lse [B] fp32)``
and ``backward(...)`` recomputing the logits from ``lse``; ``_Head`` is the one autograd Function.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch

__all__ = ["token_logprobs", "available_backends"]

BACKENDS = ("auto", "triton", "cpp", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: torch backend (reference checks)
_CPP_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_TORCH_CHUNK_ELEMENTS = 1 << 23  # fp32 weight elements per step of the torch backend (32 MiB)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, token_ids, bias: torch.Tensor | None = None,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities over the full vocabulary of a few tokens, without a [B, V] logits buffer.

    Args:
        hidden: [B, H] float32, float16 or bfloat16 (the last hidden state of each sequence); float64 runs on
            the torch backend and stays float64 (for float64 reference checks such as finite differences).
        weight: [V, H] the LM head, same dtype and device as ``hidden``.
        token_ids: integer [K] (the same tokens for every row, e.g. yes and no) or [B, K] (per row), each in
            [0, V); repeated ids are allowed.
        bias: optional [V] floating tensor on the same device.
        backend: "auto" (Triton on CUDA, C++ on CPU for fp32/bf16, torch otherwise), "triton", "cpp" or "torch".

    Returns:
        (logp, lse): logp [B, K] float32 = logits[b, ids] - lse[b], and lse [B] float32 = logsumexp(logits[b]),
        whatever the input dtype (accumulation in float32; float64 inputs give float64). Both are differentiable with respect to
        ``hidden``, and to ``weight`` / ``bias`` when they require grad (a frozen head gets no gradient buffer).
    """
    ids = _validate(hidden, weight, token_ids, bias, backend)
    impl = _resolve_backend(backend, hidden)
    return _Head.apply(hidden, weight, bias, ids, impl)


def available_backends(device="cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run for tensors of this device and dtype (besides "auto")."""
    probe = torch.empty(0, device=device, dtype=dtype)
    return [name for name in BACKENDS[1:] if _unavailable(name, probe) is None]


# ----------------------------------------------------------------------------------------------------
# Dispatch and validation


def _resolve_backend(backend, hidden):
    """The one place that picks a backend implementation for ``hidden``'s device and dtype."""
    if backend == "auto":
        for name in ("triton", "cpp") if hidden.is_cuda else ("cpp",):
            if _unavailable(name, hidden) is None:
                return _load(name)
        return _load("torch")
    reason = _unavailable(backend, hidden)
    if reason is not None:
        raise RuntimeError(f"rdfast.ops: backend={backend!r} is unavailable: {reason}")
    return _load(backend)


def _unavailable(name, hidden):
    """None if backend ``name`` can run on ``hidden``'s device and dtype, else why not."""
    if name == "torch":
        return None
    if name == "triton":
        if hidden.dtype == torch.float64:
            return "it supports float32, float16 and bfloat16 (got torch.float64)"
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'rdfast[triton]')"
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return f"it needs CUDA tensors (got {hidden.device}; CPU tensors only under TRITON_INTERPRET=1)"
        return None
    if name == "cpp":
        if hidden.device.type != "cpu":
            return f"it needs CPU tensors (got {hidden.device})"
        if hidden.dtype not in _CPP_DTYPES:
            return f"it supports float32 and bfloat16 (got {hidden.dtype})"
        if _cpp_module() is None:
            return "the extension rdfast._C is not built (pip install -e . with a C++ compiler and OpenMP)"
        return None
    raise ValueError(f"rdfast.ops: unknown backend {name!r}; expected one of {BACKENDS}")


def _load(name):
    if name == "triton":
        return importlib.import_module("rdfast.kernels.head")  # imports triton, on first use only
    return {"cpp": _CppBackend, "torch": _TorchBackend}[name]


_CPP = []


def _cpp_module():
    if not _CPP:
        try:
            from rdfast import _C
        except ImportError:
            _C = None
        _CPP.append(_C)
    return _CPP[0]


def _validate(hidden, weight, token_ids, bias, backend):
    """Check shapes, dtypes, devices and id ranges up front; return ids as contiguous int64 [B, K]."""
    if backend not in BACKENDS:
        raise ValueError(f"rdfast.ops: unknown backend {backend!r}; expected one of {BACKENDS}")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"rdfast.ops: {name} must be a 2-D tensor, got {_describe(t)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"rdfast.ops: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    (B, H), (V, Hw) = hidden.shape, weight.shape
    if Hw != H:
        raise ValueError(f"rdfast.ops: hidden [B, H] = {list(hidden.shape)} and weight [V, H] = {list(weight.shape)} "
                         "disagree on H")
    if B < 1 or H < 1 or V < 1:
        raise ValueError(f"rdfast.ops: empty input: hidden {list(hidden.shape)}, weight {list(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"rdfast.ops: hidden is {hidden.dtype} but weight is {weight.dtype}; cast one of them")
    if weight.device != hidden.device:
        raise ValueError(f"rdfast.ops: hidden is on {hidden.device} but weight is on {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (V,) or not bias.is_floating_point():
            raise ValueError(f"rdfast.ops: bias must be a floating [V] = [{V}] tensor, got {_describe(bias)}")
        if bias.device != hidden.device:
            raise ValueError(f"rdfast.ops: bias is on {bias.device} but hidden is on {hidden.device}")

    ids = token_ids if isinstance(token_ids, torch.Tensor) else torch.as_tensor(token_ids)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"rdfast.ops: token_ids must be an integer tensor, got {ids.dtype}")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0).expand(B, -1)
    if ids.dim() != 2 or ids.shape[0] != B or ids.shape[1] < 1:
        raise ValueError(f"rdfast.ops: token_ids must be [K] or [B, K] = [{B}, K] with K >= 1, "
                         f"got {list(token_ids.shape) if isinstance(token_ids, torch.Tensor) else token_ids}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"rdfast.ops: token_ids must lie in [0, V) = [0, {V}), got values in [{lo}, {hi}]")
    return ids.to(device=hidden.device, dtype=torch.long).contiguous()


def _acc(hidden):
    """Accumulation dtype: float32, or float64 for float64 inputs."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _describe(x):
    return f"{type(x).__name__} of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else repr(x)


# ----------------------------------------------------------------------------------------------------
# The autograd Function shared by all backends


class _Head(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, impl):
        hidden, weight = hidden.contiguous(), weight.contiguous()
        bias32 = None if bias is None else bias.detach().to(_acc(hidden)).contiguous()
        tgt, lse = impl.forward(hidden, weight, bias32, ids)
        ctx.impl, ctx.bias_dtype = impl, None if bias is None else bias.dtype
        ctx.save_for_backward(hidden, weight, bias32, ids, lse)
        return tgt - lse[:, None], lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, g_lse):
        hidden, weight, bias32, ids, lse = ctx.saved_tensors
        need_dh, need_dw, need_db = ctx.needs_input_grad[:3]
        g = g.to(_acc(hidden)).contiguous()
        coef = (g.sum(1) - g_lse.to(g.dtype)).contiguous()  # dlogits = scatter(g) - coef * softmax
        dh, dw, db = ctx.impl.backward(hidden, weight, bias32, ids, lse, g, coef, need_dh, need_dw, need_db)
        return (
            dh.to(hidden.dtype) if need_dh else None,
            dw if need_dw else None,  # already in weight's dtype
            db.to(ctx.bias_dtype) if need_db else None,
            None,
            None,
        )


# ----------------------------------------------------------------------------------------------------
# Backends


class _TorchBackend:
    """Plain PyTorch, chunked over the vocabulary: extra memory O(B*chunk + chunk*H), independent of V."""

    @staticmethod
    def _chunks(weight):
        V, H = weight.shape
        step = max(256, _TORCH_CHUNK_ELEMENTS // H)
        for v0 in range(0, V, step):
            yield v0, min(V, v0 + step)

    @staticmethod
    def _logits(h32, weight, bias, v0, v1):
        w = weight[v0:v1].to(h32.dtype)  # a view for fp32, a bounded copy for fp16/bf16
        z = h32 @ w.T
        if bias is not None:
            z += bias[v0:v1]
        return z, w

    @staticmethod
    def forward(hidden, weight, bias, ids):
        h32 = hidden.to(_acc(hidden))
        B = h32.shape[0]
        lse = torch.full((B,), float("-inf"), device=h32.device, dtype=h32.dtype)
        tgt = torch.zeros(ids.shape, device=h32.device, dtype=h32.dtype)
        for v0, v1 in _TorchBackend._chunks(weight):
            z, _ = _TorchBackend._logits(h32, weight, bias, v0, v1)
            lse = torch.logaddexp(lse, torch.logsumexp(z, dim=1))
            inside = (ids >= v0) & (ids < v1)
            tgt = torch.where(inside, z.gather(1, (ids - v0).clamp(0, v1 - v0 - 1)), tgt)
        return tgt, lse

    @staticmethod
    def backward(hidden, weight, bias, ids, lse, g, coef, need_dh, need_dw, need_db):
        h32 = hidden.to(_acc(hidden))
        dh = torch.zeros_like(h32) if need_dh else None
        dw = torch.empty_like(weight) if need_dw else None
        db = torch.empty(weight.shape[0], device=h32.device, dtype=h32.dtype) if need_db else None
        for v0, v1 in _TorchBackend._chunks(weight):
            z, w = _TorchBackend._logits(h32, weight, bias, v0, v1)
            d = torch.exp(z - lse[:, None]).mul_(-coef[:, None])
            inside = (ids >= v0) & (ids < v1)
            d.scatter_add_(1, (ids - v0).clamp(0, v1 - v0 - 1), torch.where(inside, g, 0.0))  # repeated ids add
            if need_dh:
                dh.addmm_(d, w)
            if need_dw:
                dw[v0:v1] = d.T @ h32
            if need_db:
                db[v0:v1] = d.sum(0)
        return dh, dw, db


class _CppBackend:
    """rdfast._C: one pass over the weight per call, all cores on slices of the vocabulary."""

    @staticmethod
    def _args(hidden, weight, bias, ids):
        (B, H), V, K = hidden.shape, weight.shape[0], ids.shape[1]
        return (hidden.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(), ids.data_ptr(),
                B, H, V, K, _CPP_DTYPES[hidden.dtype], torch.get_num_threads())

    @staticmethod
    def forward(hidden, weight, bias, ids):
        B, K = ids.shape
        lse, tgt = torch.empty(B), torch.empty(B, K)
        _cpp_module().head_forward(*_CppBackend._args(hidden, weight, bias, ids), lse.data_ptr(), tgt.data_ptr())
        return tgt, lse

    @staticmethod
    def backward(hidden, weight, bias, ids, lse, g, coef, need_dh, need_dw, need_db):
        dh = torch.empty(hidden.shape) if need_dh else None
        dw = torch.empty_like(weight) if need_dw else None
        db = torch.empty(weight.shape[0]) if need_db else None
        ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
        _cpp_module().head_backward(*_CppBackend._args(hidden, weight, bias, ids), lse.data_ptr(), g.data_ptr(),
                                    coef.data_ptr(), ptr(dh), ptr(dw), ptr(db))
        return dh, dw, db


def finite_rewards(rewards: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """``rewards`` [N] unchanged when all are finite: a score is never NaN or inf.

    Args:
        rewards: [N] rewards of items ``offset`` .. ``offset + N - 1``.
        offset: the index of the first one among the call's items (for the message).
    Raises:
        FloatingPointError naming the first item whose reward is not finite.
    """
    bad = ~torch.isfinite(rewards.detach())
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise FloatingPointError(f"item {offset + i}: the model gave a non-finite reward ({rewards[i].item()}); its "
                                 "activations overflow or its weights are broken (in float16 or bfloat16, try "
                                 "dtype=torch.float32)")
    return rewards
