"""The op on a machine without a GPU: FLA's signature, the reference fallback said once, the checks."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import gdnc
from gdnc.check import kernel_vs_reference


def inputs(T=70, H=2, HV=4, K=64, V=64, dtype=torch.bfloat16, N=1):
    q = F.normalize(torch.randn(1, T, H, K), dim=-1).to(dtype)
    k = F.normalize(torch.randn(1, T, H, K), dim=-1).to(dtype)
    v = torch.randn(1, T, HV, V).to(dtype)
    return q, k, v, F.logsigmoid(torch.randn(1, T, HV)), torch.rand(1, T, HV), torch.randn(N, HV, K, V)


def test_cpu_call_falls_back_to_the_reference_and_says_so_once():
    gdnc.ops._warned.clear()
    q, k, v, g, beta, h0 = inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            o, ht = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert [str(w.message) for w in caught] == ["gdnc: no CUDA tensors; using the chunked reference"]
    assert o.dtype == torch.bfloat16 and o.shape == (1, 70, 4, 64)
    assert ht.dtype == torch.float32 and ht.shape == (1, 4, 64, 64)
    o2, ht2 = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0)
    assert ht2 is None and torch.equal(o, o2)


def test_kernel_vs_reference_measures_the_fallback():
    """The GPU tests' measuring function, run on CPU (where the op is the fp32 chunked reference)."""
    q, k, v, g, beta, h0 = inputs(N=2)
    cu = torch.tensor([0, 1, 70])
    o, ht, err, yard = kernel_vs_reference(gdnc.get_variant("gdn"), q, k, v, g, beta, h0, cu)
    assert err["o"] < 1e-2 and err["final_state"] < 1e-5  # fp32 reference, bf16 output
    assert 0 < yard["o"] < 1e-2 and 0 < yard["final_state"] < 1e-2


def test_l2norm_in_kernel_normalises_q_and_k():
    q, k, v, g, beta, _ = inputs()
    o1, _ = gdnc.chunk_gated_delta_rule(q * 3, k * 5, v, g, beta, use_qk_l2norm_in_kernel=True)
    o2, _ = gdnc.chunk_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(o1.float(), o2.float(), atol=3e-2, rtol=3e-2)


def test_bad_arguments_name_themselves():
    q, k, v, g, beta, _ = inputs()
    with pytest.raises(ValueError, match=r"beta must be \[B, T, HV\]"):
        gdnc.chunk_gated_delta_rule(q, k, v, g, beta[..., :2])
    with pytest.raises(TypeError, match="g must be a torch.Tensor"):
        gdnc.chunk_gated_delta_rule(q, k, v, None, beta)


def test_chunk_index_on_the_device_matches_the_sequences():
    """gdn_prepare's chunk layout, built without reading cu_seqlens on the host: every real chunk
    in order, then padding slots that point past the last sequence's end."""
    import math

    from gdnc.ops import chunk_index

    for lengths in ([1], [64], [65, 1, 63], [1000, 1, 2000, 64, 130], [128, 129, 127]):
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        index = [tuple(row) for row in chunk_index(cu, sum(lengths)).tolist()]
        chunks = [(n, c) for n, length in enumerate(lengths) for c in range(math.ceil(length / 64))]
        assert index[:len(chunks)] == chunks
        assert len(index) == sum(lengths) // 64 + len(lengths)
        assert all(cu[n] + 64 * c >= cu[n + 1] for n, c in index[len(chunks):])
