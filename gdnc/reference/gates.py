"""The pairwise decay gate of a chunk: one piece of code for the reference, the interpreter and
(as documented semantics) the kernels.

For tokens i (rows) and j (columns) of a chunk, with chunk-local cumulative log gates l:
    "inclusive"  j <= i:  base^(l_i − l_j), exactly 1 on the diagonal
    "strict"     j < i:   base^(l_i − l_j)
    "shifted"    j < i:   base^(l_(i−1) − l_j), exactly 1 at j = i − 1  (a read before the update)
zero elsewhere. The exponent is masked before it is exponentiated (no exp of a positive argument for
non-increasing l), and exponents that are identically zero are the constant 1: under strong decay
the true gradient of l is ~exp(−30) and a pair of cancelling O(1) gradients would swamp it.
"""
from __future__ import annotations

import math

import torch

MODES = ("inclusive", "strict", "shifted")


def pair_gate(la: torch.Tensor, lb: torch.Tensor, mode: str, base: str = "e") -> torch.Tensor:
    """la, lb: [NH, L] (scalar gates) -> [NH, L, L]; or [NH, L, K] (per-K gates) -> [NH, L, L, K]."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    L = la.shape[1]
    if mode == "shifted":
        la = torch.cat([torch.zeros_like(la[:, :1]), la[:, :-1]], 1)
    ones = torch.ones(L, L, dtype=torch.bool, device=la.device)
    keep = ones.tril(0 if mode == "inclusive" else -1)
    unit = {"inclusive": ones.tril(0).triu(0), "strict": torch.zeros_like(ones),
            "shifted": ones.tril(-1).triu(-1)}[mode]
    exponent_mask = keep & ~unit
    if la.dim() == 3:
        exponent_mask, unit = exponent_mask[..., None], unit[..., None]
        diff = la[:, :, None, :] - lb[:, None, :, :]
    else:
        diff = la[:, :, None] - lb[:, None, :]
    masked = torch.where(exponent_mask, diff, float("-inf"))
    gate = masked.exp() if base == "e" else torch.exp2(masked)
    return gate + unit


def ln_base(base: str) -> float:
    """d/dx base^x = ln(base) * base^x."""
    return 1.0 if base == "e" else math.log(2.0)
