"""R1 gate hoisting: the inverse needs no gates.

With D = diag(exp(l)), (R Dᵀ ⊙ Γ) = D (R Dᵀ) D⁻¹ on the strict lower triangle, and a diagonal
similarity commutes with StrictLower, diag(β) and inversion, so

    (I + StrictLower(diag(β)(R Dᵀ ⊙ Γ)))⁻¹ = G ⊙ (I + StrictLower(diag(β) R Dᵀ))⁻¹

with G the inclusive decay mask. The inverse then takes no exp, can be shared by forward, backward
and context parallelism, and D⁻¹ (which overflows under strong decay) is never formed.
Legal for scalar or per-head decay; per-K decay gates each channel separately.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program


def hoist_gates(p: Program) -> Program:
    p = p.copy()
    a = p.value_of("A")
    if a is None:
        reason = "no decay: the inverse is already gate-free" if p.value_of("A_free") else \
            "identity transition: there is no inverse"
        p.log.append(f"hoist_gates: skipped ({reason})")
        return p
    prod = p.producer()
    inverse = prod[a]
    if inverse.kind == "hbm":
        inverse = prod[inverse.args[0]]
    scaled = prod[inverse.args[0]]
    gated = prod[scaled.args[0]]
    if gated.kind == "gated_inner":
        p.log.append("hoist_gates: skipped (per-K decay: exp(l_ic - l_jc) differs per channel, so the "
                     "gate is not a diagonal similarity of the C x C matrix; the inverse keeps its gates)")
        return p
    dot, mask = (prod[x] for x in gated.args)
    l = mask.args[0]
    b = Builder(p, at=p.index_of(a) + 1)
    free = b.op("tri_inverse", b.op("scale_rows", dot.out, scaled.args[1], name="M_beta_free"),
                name="A_free", role="A_free")
    stored = b.op("hbm", free, name="A_free_hbm", role="A_free", dtype="bf16") if prod[a].kind == "hbm" else free
    hoisted = b.op("mul", b.op("decay_mask", l, mode="inclusive", base="e", name="G_A", role="decay_mask"),
                   stored, name="A_gated", role="A_hoisted")
    p.replace_uses(a, hoisted)
    p.log.append("hoist_gates: A = G ⊙ (I + StrictLower(diag(β) R Dᵀ))⁻¹; the inverse takes no exp")
    return p
