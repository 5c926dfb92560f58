"""Run compiled chunk programs over a whole call, with the references' signature and results."""
from __future__ import annotations

import torch

from gdnc.ir.interpret import run_backward, run_forward
from gdnc.ir.program import Program
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.symbols import HeadScalar, KeyVector
from gdnc.reference.problem import prepare


def program_forward(rec: Recurrence, forward: Program, q, k, v, *, scale=None, initial_state=None,
                    cu_seqlens=None, chunk_size=64, **inputs):
    """o [B, T, HV, V] and final state [N, HV, K, V] from a forward (or state-only: o is None) program."""
    problem = prepare(rec, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                      inputs=inputs, dtype=torch.float64)
    outs, states = [], []
    for tensors, h0 in problem.groups():
        o, ht = run_forward(forward, problem, tensors, h0, chunk_size)
        outs.append(o)
        states.append(ht)
    return (torch.cat(outs, 1) if outs[0] is not None else None), torch.cat(states, 0)


def program_gradients(rec: Recurrence, state: Program, backward: Program, q, k, v, d_o, d_ht, *,
                      scale=None, initial_state=None, cu_seqlens=None, chunk_size=64, **inputs) -> dict:
    """Gradients of <o, d_o> + <final_state, d_ht> for every input, in the inputs' own layouts:
    dq, dk, dv, d<input>, dh0 (dh0 only with an initial state)."""
    problem = prepare(rec, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                      inputs=inputs, dtype=torch.float64)
    per_group = []
    bounds = problem.cu_seqlens or [0, problem.T]
    for n, (tensors, h0) in enumerate(problem.groups()):
        if problem.cu_seqlens is None:
            d_o_g, d_ht_g = d_o, d_ht
        else:
            d_o_g, d_ht_g = d_o[:, bounds[n]:bounds[n + 1]], d_ht[n:n + 1]
        per_group.append(run_backward(state, backward, problem, tensors, h0, d_o_g.double(),
                                      d_ht_g.double(), chunk_size))
    grads = {name: torch.cat([g[name] for g in per_group], 1 if name != "dh0" else 0) for name in per_group[0]}
    # back from per-value-head tiles to the inputs' layouts: GVA groups and per-head inputs sum up
    H = q.shape[2]
    group = problem.HV // H
    out = {}
    for sym_name in ["q", "k", "v"] + [a.name for a in rec.inputs]:
        g = grads[f"d{sym_name}"]
        sym = next((a for a in rec.inputs if a.name == sym_name), None)
        if sym_name in ("q", "k") or isinstance(sym, KeyVector):
            g = g.reshape(*g.shape[:2], H, group, *g.shape[3:]).sum(3)
        elif isinstance(sym, HeadScalar):
            g = g.sum((0, 1))
        out[f"d{sym_name}"] = g
    if initial_state is not None:
        out["dh0"] = grads["dh0"]
    return out
