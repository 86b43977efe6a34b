"""Packed (varlen) attention: the reference against dense attention, GPU kernels against the reference."""
import pytest
import torch

from rdfast.attention import packed_suffix_layout, reference_varlen_attention, varlen_attention


def dense_float64(q, k, v, lengths_q, lengths_k, causal):
    """Each sequence on its own, float64, explicit softmax (no shared code with the reference)."""
    out, oq, ok = [], 0, 0
    groups = q.shape[1] // k.shape[1]
    for nq, nk in zip(lengths_q, lengths_k):
        qs, ks, vs = q[oq:oq + nq].double(), k[ok:ok + nk].double(), v[ok:ok + nk].double()
        ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / q.shape[-1] ** 0.5
        if causal:  # query i (of nq) sees keys up to nk - nq + i
            allowed = torch.arange(nk)[None, :] <= (nk - nq + torch.arange(nq))[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
        oq, ok = oq + nq, ok + nk
    return torch.cat(out)


def packed_inputs(gen, lengths_q, lengths_k, hq=4, hkv=2, d=24, dtype=torch.float32, device="cpu"):
    q = torch.randn(sum(lengths_q), hq, d, generator=gen).to(device, dtype)
    k = torch.randn(sum(lengths_k), hkv, d, generator=gen).to(device, dtype)
    v = torch.randn(sum(lengths_k), hkv, d, generator=gen).to(device, dtype)
    cu = lambda ls: torch.tensor([0] + list(torch.tensor(ls).cumsum(0)), dtype=torch.int32, device=device)  # noqa: E731
    return q, k, v, cu(lengths_q), cu(lengths_k)


@pytest.mark.parametrize("causal", [True, False])
def test_reference_equals_dense_attention(gen, causal):
    lengths_q, lengths_k = [5, 1, 13, 7], [5, 9, 20, 7]  # some with a prefix of extra keys
    q, k, v, cu_q, cu_k = packed_inputs(gen, lengths_q, lengths_k)
    ours = reference_varlen_attention(q, k, v, cu_q, cu_k, causal=causal)
    torch.testing.assert_close(ours.double(), dense_float64(q, k, v, lengths_q, lengths_k, causal), atol=1e-5, rtol=0)


def test_packed_suffix_layout_repeats_the_prefix_before_each_suffix():
    cu_q, cu_k, index = packed_suffix_layout([3, 1, 2], prefix_length=4, device="cpu")
    assert cu_q.tolist() == [0, 3, 4, 6] and cu_k.tolist() == [0, 7, 12, 18]
    prefix = [0, 1, 2, 3]
    assert index.tolist() == prefix + [4, 5, 6] + prefix + [7] + prefix + [8, 9]


def test_bad_shapes_are_named(gen):
    q, k, v, cu_q, cu_k = packed_inputs(gen, [3], [3], hq=3, hkv=2)
    with pytest.raises(ValueError, match="multiple of key heads"):
        varlen_attention(q, k, v, cu_q, cu_k, 3, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flash_attn", "torch"])
def test_gpu_backends_equal_reference(gen, backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    lengths_q, lengths_k = [37, 1, 130, 64], [37, 90, 200, 64]
    q, k, v, cu_q, cu_k = packed_inputs(gen, lengths_q, lengths_k, hq=8, hkv=2, d=64, dtype=torch.bfloat16, device="cuda")
    ours = varlen_attention(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), backend=backend)
    ref = dense_float64(q.cpu(), k.cpu(), v.cpu(), lengths_q, lengths_k, True)
    torch.testing.assert_close(ours.double().cpu(), ref, atol=2e-2, rtol=0)  # bf16 inputs: 1e-2 scale
