"""R6 merged gate gradient: one rowsum − colsum for every use of a shared decay mask.

g enters the backward through the mask G (and the vectors γ, r, γ_L). Each use of G (in Pg = G ⊙ P
and Ag = G ⊙ A) contributes rowsum(X_u) − colsum(X_u) with X_u = dG_u ⊙ G to the gradient of l.
The map is linear in dG, so the contributions merge: X = G ⊙ Σ_u dG_u, one rowsum and one colsum.
"""
from __future__ import annotations

from gdnc.ir.program import Builder, Program


def merge_gate_gradients(p: Program) -> Program:
    p = p.copy()
    prod = p.producer()
    merged = 0
    for acc in [op for op in p.ops if op.kind == "sum"]:
        groups: dict[tuple, list[str]] = {}
        for arg in acc.args:
            op = prod.get(arg)
            if op is not None and op.kind == "decay_mask_grad":
                groups.setdefault((op.args[1], op.attrs), []).append(arg)
        args = list(acc.args)
        b = Builder(p, at=p.index_of(acc.out))
        for (mask, attrs), parts in groups.items():
            if len(parts) < 2:
                continue
            d_mask = b.op("sum", *[prod[x].args[0] for x in parts], name=f"d_{mask}")
            grad = b.op("decay_mask_grad", d_mask, mask, name=f"d_l_from_{mask}", **dict(attrs))
            args = [grad if x == parts[0] else x for x in args if x not in parts[1:]]
            merged += len(parts) - 1
        p.ops[p.index_of(acc.out)] = p.ops[p.index_of(acc.out)].with_(args=tuple(args))
    if not merged:
        p.log.append("merge_gate_gradients: skipped (no value gets gate gradients from several uses of one mask)")
    else:
        p.log.append(f"merge_gate_gradients: {merged + 1} mask-gradient reductions merged into one")
    return p
