"""R7 reassociation: v_new is never formed; the forward's serial chain is two GEMMs, not three.

After eliminate_wu the forward computes v_new = A_β W (W = X − Y Ŝ depends on the state) and uses it
twice: the output P_g v_new and the state update D_rᵀ v_new. Matrix products associate, so

    D_rᵀ (A_β W) = (A_βᵀ D_r)ᵀ W = X̃ᵀ W          X̃ = A_βᵀ D_r   [C, K], free of the state
    P_g  (A_β W) = (P_g A_β) W   = M W            M  = P_g A_β    [C, C], free of the state

Both new factors are computed off the chain (a kernel can prepare them a chunk ahead), and the
chain per chunk becomes Y Ŝ → X̃ᵀ W. Tensor-core work changes by C·C·(K + C − V) MACs per chunk
(+C³ at K = V): the price of a shorter chain.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program


def reassociate_chain(p: Program) -> Program:
    p = p.copy()
    v_new = p.value_of("v_new")
    prod = p.producer()
    through_hbm = v_new is not None and prod[v_new].kind == "hbm"
    product = prod[v_new].args[0] if through_hbm else v_new
    if product is None or prod[product].kind != "gemm" or prod.get(prod[product].args[1]) is None \
            or prod[prod[product].args[1]].role != "W":
        p.log.append("reassociate_chain: skipped (no v_new = A_β W: run eliminate_wu first, or the "
                     "transition is the identity)")
        return p
    if through_hbm:
        p.log.append("reassociate_chain: skipped (v_new still goes through HBM: run fuse_forward first)")
        return p
    uses = p.users().get(v_new, [])
    if not uses or any(op.kind != "gemm" for op in uses):
        p.log.append("reassociate_chain: skipped (v_new has a use that is not a GEMM)")
        return p
    a_beta, w = prod[v_new].args
    for use in uses:
        b = Builder(p, at=p.index_of(use.out))
        if use.attr("ta") and use.args[1] == v_new:
            # D_rᵀ v_new: the state update
            x = b.op("gemm", a_beta, use.args[0], ta=True, name="X_chain", role="X_chain")
            new = b.op("gemm", x, w, ta=True, name=use.out + "_W")
        elif not use.attr("ta") and not use.attr("tb") and use.args[1] == v_new:
            # P_g v_new: the output
            m = b.op("gemm", use.args[0], a_beta, name="M_out", role="M_out")
            new = b.op("gemm", m, w, name=use.out + "_W")
        else:
            p.log.append(f"reassociate_chain: skipped (v_new enters {use.out} in a form this pass does not "
                         "reassociate)")
            return p
        p.replace_uses(use.out, new)
    p.log.append("reassociate_chain: S' uses X̃ᵀ W with X̃ = A_βᵀ D_r, O uses (P_g A_β) W; v_new is not formed")
    return p
