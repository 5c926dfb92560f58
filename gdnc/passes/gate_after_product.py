"""R8 gates after the product: X̃ and M take their decay outside the GEMM, so no C×C matrix is gated
elementwise before a GEMM.

After reassociate_chain the forward forms, with G the inclusive decay mask of l = cumsum(x), A the
gate-free unit lower-triangular inverse and A_β = (G ⊙ A) diag(β):

    X̃ = A_βᵀ D_r,  D_r = diag(r) K,  r = exp(l_to_end),  l_to_end = exclusive reverse cumsum of x
    M  = (P ⊙ G) A_β

For i ≥ j, r_i G_ij = exp(l_L − l_i) exp(l_i − l_j) = r_j, and A_ij = 0 for i < j, so

    X̃ = diag(β ⊙ r) (Aᵀ K)                                  the gate becomes a row scaling of X̃
    M  = G ⊙ ((tril(P) A) diag(β))                           since G_ik G_kj = G_ij for j ≤ k ≤ i

(a sum over k outside j ≤ k ≤ i has a zero factor on both sides). Tensor-core work is unchanged; a
kernel exponentiates the C² pair gates once, on M's accumulator, instead of gating P and A_β (and
r ⊙ A_β) elementwise in shared memory before their GEMMs.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Op, Program


def _skip(p: Program, why: str) -> Program:
    p.log.append(f"gate_after_product: skipped ({why})")
    return p


def _split_mul(op: Op | None, is_mask) -> tuple[str, str] | None:
    """(mask, other) for a mul whose one operand is the mask."""
    if op is None or op.kind != "mul":
        return None
    a, b = op.args
    if is_mask(a):
        return a, b
    if is_mask(b):
        return b, a
    return None


def gate_after_product(p: Program) -> Program:
    p = p.copy()
    m_out, x_chain = p.value_of("M_out"), p.value_of("X_chain")
    if m_out is None or x_chain is None:
        return _skip(p, "no X̃ and M: run reassociate_chain first")
    prod = p.producer()

    def is_inclusive_mask(v):
        op = prod.get(v)
        return op is not None and op.kind == "decay_mask" and op.attr("mode") == "inclusive"

    m_op, x_op = prod[m_out], prod[x_chain]
    a_beta = m_op.args[1]
    ab_op = prod.get(a_beta)
    if ab_op is None or ab_op.kind != "scale_cols" or x_op.args[0] != a_beta or not x_op.attr("ta"):
        return _skip(p, "X̃ and M do not share A_β = (G ⊙ A) diag(β)")
    gated_a, beta = ab_op.args
    split_a, split_p = _split_mul(prod.get(gated_a), is_inclusive_mask), \
        _split_mul(prod.get(m_op.args[0]), is_inclusive_mask)
    if split_a is None or split_p is None or split_a[0] != split_p[0]:
        return _skip(p, "P and A are not gated by one shared inclusive decay mask (no decay, per-channel gates, "
                        "or share_decay_mask not run)")
    mask, a = split_a
    a_src = prod.get(a)
    a_src = prod.get(a_src.args[0]) if a_src is not None and a_src.kind == "hbm" else a_src
    if a_src is None or a_src.kind != "tri_inverse":
        return _skip(p, "the gated matrix is not the unit lower-triangular inverse")
    d_r = prod.get(x_op.args[1])
    r = prod.get(d_r.args[1]) if d_r is not None and d_r.kind == "scale_rows" else None
    to_end = prod.get(r.args[0]) if r is not None and r.kind == "exp" else None
    cum = prod.get(prod[mask].args[0])
    if to_end is None or cum is None or to_end.kind != "cumsum" or cum.kind != "cumsum" \
            or not (to_end.attr("exclusive") and to_end.attr("reverse")) \
            or cum.attr("exclusive") or cum.attr("reverse") or to_end.args[0] != cum.args[0] \
            or r.attr("base") != prod[mask].attr("base"):
        return _skip(p, "X̃'s row gate r is not exp(l_L − l) of the mask's l")

    b = Builder(p, at=p.index_of(m_out))
    masked = b.op("tril", split_p[1], strict=False, name="P_tril")
    product = b.op("gemm", masked, a, name="PA")
    new_m = b.op("mul", mask, b.op("scale_cols", product, beta, name="PA_beta"), name="M_gated", role="M_out")
    b = Builder(p, at=p.index_of(x_chain))
    rho = b.op("mul", beta, r.out, name="rho")
    new_x = b.op("scale_rows", b.op("gemm", a, d_r.args[0], ta=True, name="AtK"), rho, name="X_rows",
                 role="X_chain")
    # the old values keep no role: the kernels find X̃ and M by role
    p.ops = [op.with_(role="") if op.out in (m_out, x_chain) else op for op in p.ops]
    p.replace_uses(m_out, new_m)
    p.replace_uses(x_chain, new_x)
    p.log.append("gate_after_product: X̃ = diag(β r) Aᵀ K, M = G ⊙ (tril(P) A) diag(β); no C×C matrix is "
                 "gated before a GEMM")
    return p
