"""Common-subexpression and dead-op elimination."""
from __future__ import annotations

from gdnc.ir.program import Program


def dce(p: Program) -> Program:
    """Drop ops whose values reach no output."""
    live = p.live()
    live.log.append(f"dce: removed {len(p.ops) - len(live.ops)} dead op(s)")
    return live


def cse(p: Program, kinds: frozenset[str] | None = None, label: str = "cse") -> Program:
    """Merge ops that compute the same kind on the same args and attrs (only ``kinds`` if given).
    One pass in program order suffices: renames flow forward, so later duplicates are seen as such."""
    p = p.copy()
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    for op in p.ops:
        op = op.with_(args=tuple(rename.get(a, a) for a in op.args))
        key = (op.kind, op.args, op.attrs)
        if kinds is None or op.kind in kinds:
            if key in seen:
                rename[op.out] = seen[key]
                continue
            seen[key] = op.out
        kept.append(op)
    p.ops = kept
    p.outputs = {n: rename.get(v, v) for n, v in p.outputs.items()}
    merged = [f"{a} -> {b}" for a, b in rename.items()]
    p.log.append(f"{label}: merged {len(merged)} op(s)" + (f" ({', '.join(merged)})" if merged else ""))
    return p
