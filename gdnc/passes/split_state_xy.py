"""R5 the X/Y split: two GEMMs on the serial chain of a state-only pass instead of three.

After hoisting and w/u elimination the state update is S' = γ_L S + (D ⊙ r)ᵀ (G ⊙ A) Z with
Z = X − diag(β)(Γ ⊙ R Ŝ): three dependent GEMMs (R Ŝ, A Z, Dᵀ(·)). Since diag(r)(G ⊙ A) = γ_L A D⁻¹,

    S' = γ_L S + Xᵀ Y,   X = Aᵀ D          (free of S: off the serial chain)
                          Y = r ⊙ X_write − γ_L diag(β) R Ŝ

with the gate-free A. Chain: R Ŝ, then Xᵀ Y. Legal for scalar/per-head decay (or none) with an
erase term, once the inverse is gate-free.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program


def split_state_xy(p: Program) -> Program:
    p = p.copy()
    if "o" in p.outputs:
        p.log.append("split_state_xy: skipped (not a state-only program: the output needs v_new itself)")
        return p
    free = p.value_of("A_free")
    if free is None:
        reason = "identity transition: the chain has no inverse" if p.value_of("A") is None else \
            "the inverse still carries gates (per-K decay, or hoist_gates not applied)"
        p.log.append(f"split_state_xy: skipped ({reason})")
        return p
    role = p.value_of
    state = p.value_of("state_decayed") or "S"
    b = Builder(p)
    x = b.op("gemm", free, role("direction"), ta=True, name="X_split", role="X_split")
    rs = b.op("scale_rows", b.op("gemm", role("erase_key"), role("state_bf16"), name="RS_chain"),
              role("erase_coef"), name="RS_beta")
    if role("gamma_last") is not None:
        rs = b.op("scale_by", rs, role("gamma_last"), name="RS_beta_gamma")
    write = role("write_value")
    if role("r") is not None:
        write = b.op("scale_rows", write, role("r"), name="X_r")
    y = b.op("sub", write, rs, name="Y_split", role="Y_split")
    new = b.op("add", state, b.op("gemm", x, y, ta=True, name="XtY"), name="S_new_xy", role="S_new")
    p.outputs["S_new"] = new
    p.log.append("split_state_xy: S' = γ_L S + Xᵀ Y with X = Aᵀ D off the chain")
    return p
