"""The chunked (WY / UT) form gdnc derives from a recurrence's canonical form, in any dtype.

Per chunk of L <= C tokens, with the chunk-local inclusive cumsum of the log decay l_i (a scalar, or
a K-vector for per-K decay) and the chunk-start state S0:

    Γ_i   = exp(l_i)                      (<= 1)
    M_ij  = Σ_c r_ic d_jc exp(l_ic − l_jc)               j < i   (erase key r, direction d)
    U     = (I + diag(β) M)⁻¹ (X − diag(β) (Γ ⊙ R) S0)   (U = X for an identity transition)
    O     = scale · [(Γ_q ⊙ P) S0 + Pg U],  Pg_ij = Σ_c p_ic d_jc exp(l_q,ic − l_jc),  j <= i
            (read "before": l_q,i = l_{i−1} and j < i)
    S_end = exp(l_last) ⊙ S0 + (d ⊙ exp(l_last − l))ᵀ U

Every exponent is a difference l_i − l_j with j <= i taken under its mask, so no exp of a positive
argument appears for gates g <= 0, however strong the decay.
"""
from __future__ import annotations

import torch

from gdnc.ir.canonical import CanonicalForm, UnsupportedRecurrence, classify
from gdnc.reference.evaluate import evaluate
from gdnc.reference.gates import pair_gate
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.problem import Problem, matrix_leaves, prepare, run, start_state, unfold_heads


def chunked(rec: Recurrence, q, k, v, *, scale=None, initial_state=None, output_final_state=False,
            cu_seqlens=None, chunk_size=CHUNK_SIZE, dtype=torch.float64, operand_dtype=None, **inputs):
    """Run ``rec`` in chunked form with chunks of ``chunk_size`` tokens. Differentiable.

    Same arguments and results as ``gdnc.reference.recurrent``. ``operand_dtype`` (e.g. bfloat16)
    rounds every matrix-product operand to it, accumulating in ``dtype``: the chunked form run as a
    tensor-core kernel runs it, the yardstick for a kernel's own error.
    """
    form = classify(rec)
    if form.decay_channel == "V":
        raise UnsupportedRecurrence(
            f"{rec.name}: the chunked form of a per-V decay is not derived yet (scalar, per-head and "
            "per-K decays are); use gdnc.reference.recurrent")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    problem = prepare(rec, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                      inputs=inputs, dtype=dtype)
    mm = torch.matmul if operand_dtype is None else \
        (lambda a, b: a.to(operand_dtype).to(dtype) @ b.to(operand_dtype).to(dtype))
    return run(problem, lambda p, t, h0: _chunks(form, p, t, h0, chunk_size, mm), output_final_state)


def token_quantities(form: CanonicalForm, problem: Problem, tensors: dict) -> dict:
    """The canonical form's per-token quantities for all tokens of a group, heads folded:
    read p, direction d, erase key r [NH, T, K]; write value x [NH, T, V]; erase coefficient β
    [NH, T] (or None); log decay l [NH, T] (scalar) or [NH, T, K] (per-K)."""
    leaves = matrix_leaves(tensors)
    shape = leaves["v"].shape[:2]

    def vector(expr):
        return evaluate(expr, leaves)[..., 0]

    def scalar(expr):
        value = torch.as_tensor(evaluate(expr, leaves), dtype=leaves["v"].dtype, device=leaves["v"].device)
        return torch.broadcast_to(value, (*shape, 1, 1))[..., 0, 0]

    log_decay = scalar(form.log_decay)
    if form.decay_channel == "K":
        log_decay = vector(form.log_decay_vector) + log_decay[..., None]
    erase = form.erase_coef is not None
    return {"p": vector(form.read_vector), "d": vector(form.direction), "x": vector(form.write_value),
            "r": vector(form.erase_key) if erase else None, "beta": scalar(form.erase_coef) if erase else None,
            "l": log_decay}


def gated_inner(a, b, l, mode: str, mm=torch.matmul):
    """Σ_c a_ic b_jc G_ijc for the chunk's pairwise decay gate G (gdnc.reference.gates.pair_gate).

    a, b: [NH, L, K]; l: [NH, L] (scalar gate) or [NH, L, K] (per-K gate). Returns [NH, L, L].
    """
    gate = pair_gate(l, l, mode)
    if l.dim() == 2:
        return mm(a, b.transpose(-1, -2)) * gate
    return torch.einsum("nik,njk,nijk->nij", a, b, gate)


def scale_rows(gate, x):
    """x [NH, L, K] scaled by exp-gates [NH, L] (per row) or [NH, L, K] (per element)."""
    return x * (gate[..., None] if gate.dim() == 2 else gate)


def _chunks(form: CanonicalForm, problem: Problem, tensors: dict, h0, chunk_size: int, mm):
    N, T = tensors["v"].shape[:2]
    tok = token_quantities(form, problem, tensors)
    state = start_state(h0, tok["x"], problem.K, problem.V)
    read_before = form.read == "before"
    outs = []
    for start in range(0, T, chunk_size):
        c = {name: (x[:, start:start + chunk_size] if x is not None else None) for name, x in tok.items()}
        l = c["l"].cumsum(1)
        l_q = torch.cat([torch.zeros_like(l[:, :1]), l[:, :-1]], 1) if read_before else l
        if c["beta"] is not None:
            m = gated_inner(c["r"], c["d"], l, "strict", mm)
            eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
            system = eye + c["beta"][..., None] * m
            rhs = c["x"] - c["beta"][..., None] * mm(scale_rows(l.exp(), c["r"]), state)
            u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        else:
            u = c["x"]
        o = mm(scale_rows(l_q.exp(), c["p"]), state) \
            + mm(gated_inner(c["p"], c["d"], l, "shifted" if read_before else "inclusive", mm), u)
        outs.append(problem.scale * o)
        # l_last − l_j as a suffix sum of the token decays after j: the last token's is a constant 0
        to_end = torch.cat([c["l"][:, 1:].flip(1).cumsum(1).flip(1), torch.zeros_like(c["l"][:, :1])], 1)
        state_decay = l[:, -1:].exp()[..., None] if l.dim() == 2 else l[:, -1:].exp().transpose(1, 2)
        state = state * state_decay + mm(scale_rows(to_end.exp(), c["d"]).transpose(1, 2), u)
    o = unfold_heads(torch.cat(outs, dim=1), N)
    return o, state.reshape(N, problem.HV, problem.K, problem.V)
