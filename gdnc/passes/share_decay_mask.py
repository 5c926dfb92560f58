"""R3 shared mask: the same C×C decay mask G gates QKᵀ and the (hoisted) inverse: one set of C×C exps."""
from __future__ import annotations

from gdnc.ir.program import Program
from gdnc.passes.cleanup import cse


def share_decay_mask(p: Program) -> Program:
    if not any(op.kind == "decay_mask" for op in p.ops):
        p = p.copy()
        reason = "per-K decay: gates are per channel inside gated_inner" if any(
            op.kind == "gated_inner" for op in p.ops) else "no decay mask"
        p.log.append(f"share_decay_mask: skipped ({reason})")
        return p
    return cse(p, kinds=frozenset({"decay_mask"}), label="share_decay_mask")
