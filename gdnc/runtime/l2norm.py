"""use_qk_l2norm_in_kernel's normalisation, differentiable, keeping what FlashQLA keeps: the normalised
rows (the tensor the op saves anyway, so no second copy) and one fp32 reciprocal norm a row — not
the fp32 copy of the input that autograd through F.normalize would keep.

    x̂ = x · rstd,  rstd = 1 / max(‖x‖, eps)          dx = rstd · (dx̂ − x̂ (x̂ · dx̂))

(the second term vanishes where the norm is clamped, as F.normalize's gradient does).
"""
from __future__ import annotations

import torch

EPS = 1e-12  # F.normalize's default


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 in fp32, wider kept
        norm = torch.linalg.vector_norm(x32, dim=-1, keepdim=True)
        rstd = 1.0 / norm.clamp_min(EPS)
        out = (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(out, rstd, norm > EPS)
        return out

    @staticmethod
    def backward(ctx, d_out):
        out, rstd, unclamped = ctx.saved_tensors
        d32, x_hat = d_out.to(rstd.dtype), out.to(rstd.dtype)
        along = (x_hat * d32).sum(-1, keepdim=True) * unclamped
        return (rstd * (d32 - x_hat * along)).to(d_out.dtype)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ over the last dimension in fp32 (or wider), returned in x's dtype; its backward keeps only the
    result and one fp32 scalar a row. x: [..., K]."""
    return _L2Normalize.apply(x)
