"""Bad input raises ValueError/TypeError naming the argument, what was given and what is expected."""
import pytest
import torch

import gdnc
from gdnc.reference import chunked, recurrent

B, T, H, HV, K, V = 1, 10, 2, 4, 8, 6


def args(**over):
    a = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, HV, V),
             g=-torch.rand(B, T, HV), beta=torch.rand(B, T, HV))
    a.update(over)
    return a


CASES = [
    ("q rank", dict(q=torch.randn(T, H, K)), ValueError, r"q must be \[B, T, H, K\].*\(10, 2, 8\)"),
    ("k shape", dict(k=torch.randn(B, T, H, K + 1)), ValueError, r"k must have q's shape.*\(1, 10, 2, 9\)"),
    ("v length", dict(v=torch.randn(B, T + 1, HV, V)), ValueError, r"v must be \[B, T, HV, V\] with B=1, T=10"),
    ("heads", dict(v=torch.randn(B, T, 3, V), g=torch.zeros(B, T, 3), beta=torch.zeros(B, T, 3)),
     ValueError, r"HV=3 heads, which is not a multiple of q/k's H=2"),
    ("gate shape", dict(g=torch.zeros(B, T, H)), ValueError, r"g must be \[B, T, HV\] = \(1, 10, 4\), got shape \(1, 10, 2\)"),
    ("missing gate", dict(beta=None), TypeError, r"missing input 'beta'; expected inputs: beta \[B, T, HV\], g"),
    ("extra input", dict(alpha=torch.zeros(B, T, HV)), TypeError, r"unexpected input 'alpha'"),
    ("not a tensor", dict(q=[[1.0]]), TypeError, r"q must be a torch.Tensor, got list"),
    ("integer tensor", dict(v=torch.zeros(B, T, HV, V, dtype=torch.int32)), TypeError, r"v must be a floating-point tensor"),
    ("h0 shape", dict(initial_state=torch.zeros(1, HV, V, K)), ValueError,
     r"initial_state must be \[N, HV, K, V\] = \(1, 4, 8, 6\).*got shape \(1, 4, 6, 8\)"),
    ("cu_seqlens decreasing", dict(cu_seqlens=torch.tensor([0, 6, 4, 10])), ValueError, r"rise strictly from 0 to T=10.*\[0, 6, 4, 10\]"),
    ("cu_seqlens wrong end", dict(cu_seqlens=torch.tensor([0, 4, 9])), ValueError, r"rise strictly from 0 to T=10"),
    ("cu_seqlens float", dict(cu_seqlens=torch.tensor([0.0, 10.0])), TypeError, r"cu_seqlens must be a 1-D int32/int64"),
    ("cu_seqlens with B>1", dict(q=torch.randn(2, T, H, K), k=torch.randn(2, T, H, K), v=torch.randn(2, T, HV, V),
                                 g=torch.zeros(2, T, HV), beta=torch.zeros(2, T, HV), cu_seqlens=torch.tensor([0, 10])),
     ValueError, r"needs B = 1, got B = 2"),
    ("h0 count for varlen", dict(cu_seqlens=torch.tensor([0, 3, 10]), initial_state=torch.zeros(1, HV, K, V)),
     ValueError, r"\(2, 4, 8, 6\) for 2 sequence\(s\)"),
    ("scale type", dict(scale="0.1"), TypeError, r"scale must be a float or None"),
    ("empty batch", dict(q=torch.randn(0, T, H, K), k=torch.randn(0, T, H, K), v=torch.randn(0, T, HV, V),
                         g=torch.zeros(0, T, HV), beta=torch.zeros(0, T, HV)),
     ValueError, r"need every dimension >= 1, got q \(0, 10, 2, 8\)"),
    ("gate in linear space", dict(g=torch.rand(B, T, HV) + 0.01), ValueError,
     r"g must be <= 0: gdn reads it as a log-space gate exp\(g\).*got a maximum of 1\.0|g must be <= 0: gdn reads it"),
]


@pytest.mark.parametrize("executor", [recurrent, chunked], ids=["recurrent", "chunked"])
@pytest.mark.parametrize("label,over,error,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(executor, label, over, error, message):
    a = {n: x for n, x in args(**over).items() if x is not None}
    with pytest.raises(error, match=message):
        executor(gdnc.get_variant("gdn"), **a)


def test_unsupported_recurrence_is_a_value_error():
    bad = gdnc.get_variant("gdn").replace(update=gdnc.S * gdnc.S.T * gdnc.S)
    with pytest.raises(ValueError, match="not linear in the state"):
        chunked(bad, **args())


def test_chunk_size_checked():
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        chunked(gdnc.get_variant("gdn"), **args(), chunk_size=0)


def test_the_op_refuses_offsets_that_could_carry_gradients():
    """cu_seqlens are integer offsets: a float tensor (the only kind that can require gradients) is
    refused, naming it, before anything runs."""
    a = args()
    with pytest.raises(TypeError, match=r"cu_seqlens must be a 1-D int32/int64 tensor of N\+1 offsets, got dtype "
                                        r"torch.float32"):
        gdnc.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                    cu_seqlens=torch.tensor([0.0, 4.0, 10.0], requires_grad=True))
