"""Reverse-mode differentiation of a chunk program: the backward program of any recurrence.

The backward program recomputes the forward ops of its chunk, then applies each op's
vector-Jacobian product in reverse order. Its inputs are the forward's plus ``d_<output>`` for each
forward output (d_o, d_S_new: the gradient carried in from the next chunk); its outputs are
``d_<input>`` for each differentiable input, including d_S (carried to the previous chunk).
Gradient contributions to one value are accumulated by one ``sum`` op. Runs before use_exp2:
every exponent is in natural units here.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program

NOT_DIFFERENTIABLE = frozenset({"scale"})  # the op's scale argument: a call constant


def build_backward(fwd: Program) -> Program:
    """The backward chunk program of ``fwd``."""
    p = fwd.copy()
    p.name = "backward"
    p.log = []
    for name, value in fwd.outputs.items():
        p.inputs[f"d_{name}"] = fwd.shape_of(value)
    b = Builder(p)
    contributions: dict[str, list[str]] = {}
    for name, value in fwd.outputs.items():
        contributions.setdefault(value, []).append(f"d_{name}")

    def grad_of(value: str) -> str | None:
        parts = contributions.get(value)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return b.op("sum", *parts, name=f"d_{value}")

    for op in reversed(fwd.ops):
        dy = grad_of(op.out)
        if dy is None:
            continue
        for arg, d in _vjp(b, op, dy, fwd):
            if arg in NOT_DIFFERENTIABLE or _is_constant(arg, fwd):
                continue
            contributions.setdefault(arg, []).append(d)

    p.outputs = {}
    for name in fwd.inputs:
        if name in NOT_DIFFERENTIABLE:
            continue
        d = grad_of(name)
        if d is None:
            d = b.op("const", value=0.0, shape=fwd.inputs[name], name=f"d_{name}_zero")
        p.outputs[f"d_{name}"] = d
    p.carried = {"d_S_new": "d_S"}
    p.verify()
    return p


def _is_constant(value: str, fwd: Program) -> bool:
    op = fwd.producer().get(value)
    return op is not None and op.kind == "const"


def _vjp(b: Builder, op, dy: str, fwd: Program) -> list[tuple[str, str]]:
    """[(arg, gradient of arg)] for one forward op given the gradient dy of its output."""
    k, at, a = op.kind, dict(op.attrs), op.args
    if at.get("base", "e") != "e":
        raise ValueError(f"autodiff runs before use_exp2; {op.out} has base {at['base']}")
    if k == "gemm":
        ta, tb = at.get("ta", False), at.get("tb", False)
        da = b.op("gemm", a[1], dy, ta=tb, tb=True) if ta else b.op("gemm", dy, a[1], tb=not tb)
        db = b.op("gemm", dy, a[0], ta=True, tb=ta) if tb else b.op("gemm", a[0], dy, ta=not ta)
        return [(a[0], da), (a[1], db)]
    if k == "add":
        return [(a[0], dy), (a[1], dy)]
    if k == "sum":
        return [(x, dy) for x in a]
    if k == "sub":
        return [(a[0], dy), (a[1], b.op("neg", dy))]
    if k == "mul":
        return [(a[0], b.op("mul", dy, a[1])), (a[1], b.op("mul", dy, a[0]))]
    if k == "neg":
        return [(a[0], b.op("neg", dy))]
    if k == "scale":
        return [(a[0], b.op("scale", dy, value=at["value"]))]
    if k in ("scale_rows", "scale_cols", "scale_by"):
        reduce = {"scale_rows": "rowsum", "scale_cols": "colsum", "scale_by": "sum_all"}[k]
        return [(a[0], b.op(k, dy, a[1])), (a[1], b.op(reduce, b.op("mul", dy, a[0])))]
    if k == "exp":
        return [(a[0], b.op("mul", dy, op.out))]
    if k == "cumsum":
        return [(a[0], b.op("cumsum", dy, reverse=not at["reverse"], exclusive=at["exclusive"]))]
    if k == "total":
        return [(a[0], b.op("fill", dy, like=fwd.shape_of(a[0])))]
    if k == "shift":
        return [(a[0], b.op("shift", dy, up=not at["up"]))]
    if k == "decay_mask":
        return [(a[0], b.op("decay_mask_grad", dy, op.out, mode=at["mode"], name=f"d_{a[0]}_from_{op.out}"))]
    if k == "gated_inner":
        return [(arg, b.op("gated_inner_grad", dy, *a, mode=at["mode"], base="e", wrt=wrt))
                for arg, wrt in zip(a, ("a", "b", "la", "lb"))]
    if k == "tri_inverse":
        # A = (I + L)^-1 with L = StrictLower(m): dL = -Aᵀ dA Aᵀ, kept strictly lower
        inner = b.op("gemm", b.op("gemm", op.out, dy, ta=True), op.out, tb=True)
        return [(a[0], b.op("tril", b.op("neg", inner), strict=True))]
    if k == "tril":
        return [(a[0], b.op("tril", dy, strict=at["strict"]))]
    if k in ("cast", "hbm"):
        return [(a[0], dy)]
    if k == "const":
        return []
    raise ValueError(f"autodiff: no vector-Jacobian product for {k} ({op.out})")
