"""R4 exp2: fold log2(e) into the gate logs once and exponentiate with exp2 everywhere.

exp(x) = 2^(x·log2 e). The log gates are scaled by log2(e) once per chunk (C multiplies) before
their cumsums; every exponential of a gate then runs as a bare ex2 on the SFU (exp would be a
multiply plus ex2 each). Legal when every use of the gate logs ends in an exponential.
"""
from __future__ import annotations

import math

from gdnc.ir.program import EXPONENTIALS, Builder, Program

LINEAR_IN_LOG = frozenset({"cumsum", "total", "shift"})


def use_exp2(p: Program) -> Program:
    p = p.copy()
    log = p.value_of("log_decay")
    if log is None:
        p.log.append("use_exp2: skipped (no decay: no exponentials of gates)")
        return p
    users = p.users()
    domain, exps, frontier = set(), set(), [log]
    while frontier:
        value = frontier.pop()
        for op in users.get(value, []):
            if op.kind in LINEAR_IN_LOG:
                if op.out not in domain:
                    domain.add(op.out)
                    frontier.append(op.out)
            elif op.kind in EXPONENTIALS:
                exps.add(op.out)
            else:
                p.log.append(f"use_exp2: skipped (the gate log {value} feeds {op.out} = {op.kind}, not an exponential)")
                return p
    b = Builder(p, at=(p.index_of(log) + 1) if log not in p.inputs else 0)
    log2 = b.op("scale", log, value=math.log2(math.e), name="log_decay_2", role="log_decay_2")
    for i, op in enumerate(p.ops):
        if op.out in domain or op.out in exps:
            op = op.with_(args=tuple(log2 if a == log else a for a in op.args))
        if op.out in exps:
            op = op.with_(attrs={**dict(op.attrs), "base": "2"})
        p.ops[i] = op
    p.log.append(f"use_exp2: log2(e) folded into the gate logs once; {len(exps)} exponential(s) now exp2")
    return p
