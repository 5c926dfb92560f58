"""Fusion: one kernel after the inverse, so v_new and the chunk-start states h stay on chip.

FLA runs the state recurrence and the output in separate kernels and passes v_new and h through
HBM; the fused kernel computes the output from the same on-chip v_new and state snapshot. Only the
inverse (a separate, parallel kernel) still hands its result over through HBM.
"""
from __future__ import annotations

from gdnc.ir.program import Program

ON_CHIP = ("v_new", "h", "w", "u")


def fuse_forward(p: Program) -> Program:
    p = p.copy()
    spills = [op for op in p.ops if op.kind == "hbm" and op.role in ON_CHIP]
    if not spills:
        p.log.append("fuse_forward: skipped (nothing crosses HBM between the kernels after the inverse)")
        return p
    for op in spills:
        p.ops.remove(op)
        p.replace_uses(op.out, op.args[0])
    p.log.append("fuse_forward: " + ", ".join(sorted({op.role for op in spills})) + " no longer written to HBM")
    return p
