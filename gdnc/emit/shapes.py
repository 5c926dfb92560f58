"""The program shapes the templates implement: before a template is filled, the recurrence's
canonical form and rewritten chunk program are checked to be what it was written for, and refused
naming what differs (gdnc.emit.render raises UnsupportedRecurrence with the list). Each check
returns the differences in words, empty where there are none."""
from __future__ import annotations

from gdnc.ir.program import Program


def gdn_form(form) -> list[str]:
    """What differs between a canonical form (gdnc.ir.canonical.CanonicalForm) and Gated DeltaNet's,
    the one form the gdn templates are written for, in words; empty if nothing does."""
    from gdnc.ir.symbols import sstr  # sympy: only while rendering

    differences = []
    if form.decay != "scalar" or sstr(form.log_decay) != "g":
        differences.append(f"the decay is {form.decay} ({_decay_text(form, sstr)}); the templates take a scalar "
                           "decay exp(g) per token and value head")
    if form.transition == "identity":
        differences.append("the transition is the identity (no erase term); the templates invert "
                           "I + StrictLower(diag(beta) K Kᵀ) for the erase beta*k*k.T")
    elif form.transition != "rank-1 (same key)":
        differences.append(f"the erase reads the state along {sstr(form.erase_key)}, not along the written key "
                           f"{sstr(form.direction)}; the templates take the erase beta*k*k.T")
    elif sstr(form.erase_coef) != "beta" or sstr(form.direction) != "k":
        differences.append(f"the erase is {sstr(form.erase_coef)}*{sstr(form.direction)}*"
                           f"{sstr(form.direction)}.T; the templates take beta*k*k.T")
    if sstr(form.write_value) != "beta*v":
        differences.append(f"the write is {form.write}; the templates write k * (beta*v).T")
    if form.read != "after" or sstr(form.read_vector) != "q":
        differences.append(f"the read is S.T*{sstr(form.read_vector)} {form.read} the update; the templates read "
                           "o = S.T*q after it")
    return differences


def _decay_text(form, sstr) -> str:
    if form.log_decay_vector is not None:
        return f"diag(exp({sstr(form.log_decay_vector)}))"
    return "none" if form.log_decay == 0 else f"exp({sstr(form.log_decay)})"


def gdn_forward_program(forward: Program) -> list[str]:
    """What the rewritten forward program lacks of the shape gdn_prepare and gdn_forward implement:
    only the gate-free inverse crosses HBM, one shared decay mask in base 2, w and u eliminated, the
    chain reassociated, the gates after the products."""
    fwd = forward.live()
    kinds = [op.kind for op in fwd.ops]
    hbm = sorted({op.role for op in fwd.ops if op.kind == "hbm"})
    problems = []
    if hbm != ["A_free"]:
        problems.append(f"HBM hand-offs {hbm}, expected only A_free")
    if kinds.count("decay_mask") != 1 or any(op.attr("base") != "2" for op in fwd.ops if op.kind in ("exp", "decay_mask")):
        problems.append("expected one shared decay mask and exp2 everywhere")
    if "scale_cols" not in kinds or any(op.role in ("w", "u") for op in fwd.ops):
        problems.append("expected w and u eliminated with β on the C×C matrix")
    if {"X_chain", "M_out"} - {op.role for op in fwd.ops} or any(op.role == "v_new" for op in fwd.ops):
        problems.append("expected the chain reassociated (X̃ᵀ W and (P_g A_β) W, no v_new)")
    producer, x_chain, m_out = fwd.producer(), fwd.value_of("X_chain"), fwd.value_of("M_out")
    if x_chain and m_out and (producer[x_chain].kind != "scale_rows" or producer[m_out].kind != "mul"):
        problems.append("expected the gates after the products (gate_after_product: X̃ = diag(β r) Aᵀ K, "
                        "M = G ⊙ (tril(P) A) diag(β))")
    return problems


GRADIENTS = ("d_q", "d_k", "d_v", "d_beta", "d_g", "d_S")


def gdn_backward_program(backward: Program) -> list[str]:
    """What the rewritten backward program lacks of the shape gdn_backward implements: the gradients
    of q, k, v, β, g and the carried state; only the gate-free inverse read from HBM; the two pair-gate
    gradients merged into one (merge_gate_gradients); one shared decay mask, in base 2."""
    bwd = backward.live()
    kinds = [op.kind for op in bwd.ops]
    problems = []
    if tuple(sorted(bwd.outputs)) != tuple(sorted(GRADIENTS)):
        problems.append(f"outputs {sorted(bwd.outputs)}, expected {sorted(GRADIENTS)}")
    if bwd.carried != {"d_S_new": "d_S"}:
        problems.append(f"carried {bwd.carried}, expected the state gradient d_S_new -> d_S")
    hbm = sorted({op.role for op in bwd.ops if op.kind == "hbm"})
    if hbm != ["A_free"]:
        problems.append(f"HBM hand-offs {hbm}, expected only A_free (the gate-free inverse)")
    if kinds.count("decay_mask_grad") != 1:
        problems.append(f"{kinds.count('decay_mask_grad')} pair-gate gradients, expected one (merge_gate_gradients)")
    if kinds.count("decay_mask") != 1 or any(op.attr("base") != "2" for op in bwd.ops if op.kind in ("exp", "decay_mask")):
        problems.append("expected one shared decay mask and exp2 everywhere")
    if kinds.count("tri_inverse") != 1:
        problems.append("expected the inverse recomputed once from K Kᵀ (its gradient −Aᵀ T Aᵀ)")
    return problems
