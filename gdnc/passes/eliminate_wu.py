"""R2 no w, no u: v_new = u − w Ŝ = A X − (A Y) Ŝ = A (X − Y Ŝ).

One C×C×K GEMM (A·Y, the WY factor w) disappears and w, u never exist. When X and Y carry the same
row scaling diag(β) (X = β ⊙ V, Y = β ⊙ Γ ⊙ R), β moves onto the C×C matrix as a column scaling:
v_new = (A diag(β)) (V − (Γ ⊙ R) Ŝ) — a C×C scaling instead of two C×V and C×K ones.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program


def eliminate_wu(p: Program) -> Program:
    p = p.copy()
    v_new = next((op.out for op in p.ops if op.role == "v_new" and op.kind == "sub"), None)
    prod = p.producer()
    if v_new is None:
        p.log.append("eliminate_wu: skipped (identity transition: no w, u factors)")
        return p

    def through_hbm(value):
        op = prod[value]
        return prod[op.args[0]] if op.kind == "hbm" else op

    u_op, ws_op = prod[prod[v_new].args[0]], prod[prod[v_new].args[1]]
    u_gemm, w_gemm = through_hbm(u_op.out), through_hbm(ws_op.args[0])
    a, x, y, state = u_gemm.args[0], u_gemm.args[1], w_gemm.args[1], ws_op.args[1]
    b = Builder(p, at=p.index_of(v_new) + 1)
    x_op, y_op = prod.get(x), prod[y]
    if x_op is not None and x_op.kind == y_op.kind == "scale_rows" and x_op.args[1] == y_op.args[1]:
        w = b.op("sub", x_op.args[0], b.op("gemm", y_op.args[0], state, name="RS"), name="W", role="W")
        a = b.op("scale_cols", a, y_op.args[1], name="A_beta", role="A_beta")
        note = "β moved onto A as a column scaling"
    else:
        w = b.op("sub", x, b.op("gemm", y, state, name="YS"), name="W", role="W")
        note = "no common row scaling to move"
    new = b.op("gemm", a, w, name="v_new_fused", role="v_new")
    p.replace_uses(v_new, new)
    p.log.append(f"eliminate_wu: v_new = A (X − Y Ŝ); the C×C×K GEMM for w is gone ({note})")
    return p
