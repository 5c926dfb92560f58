"""Token-by-token reference: evaluates the user's update expression as written, one token at a time.

It uses the IR expression itself (not the canonical form), so it is an independent oracle for the
classification and for the chunked form derived from it.
"""
from __future__ import annotations

import torch

from gdnc.reference.evaluate import evaluate
from gdnc.ir.recurrence import Recurrence
from gdnc.reference.problem import Problem, matrix_leaves, prepare, run, start_state, unfold_heads


def recurrent(rec: Recurrence, q, k, v, *, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, dtype=torch.float64, **inputs):
    """Run ``rec`` token by token. Differentiable.

    q, k: [B, T, H, K]; v: [B, T, HV, V]; inputs by name in their layouts (``g``, ``beta`` for gdn);
    initial_state: [N, HV, K, V]; cu_seqlens: [N + 1] with B = 1.
    Returns o [B, T, HV, V] and final_state [N, HV, K, V] (or None), both in ``dtype``.
    """
    problem = prepare(rec, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                      inputs=inputs, dtype=dtype)
    return run(problem, _token_by_token, output_final_state)


def _token_by_token(problem: Problem, tensors: dict, h0):
    rec = problem.rec
    N, T = tensors["v"].shape[:2]
    leaves = matrix_leaves(tensors)
    state = start_state(h0, leaves["v"], problem.K, problem.V)
    outs = []
    for t in range(T):
        env = {name: x[:, t] for name, x in leaves.items()}
        env["S"] = state
        new_state = evaluate(rec.update, env, problem.K)
        if rec.read == "after":
            env["S"] = new_state
        outs.append(evaluate(rec.output, env, problem.K)[..., 0] * problem.scale)
        state = new_state
    o = unfold_heads(torch.stack(outs, dim=1), N)
    return o, state.reshape(N, problem.HV, problem.K, problem.V)
