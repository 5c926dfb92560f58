"""A float64 interpreter of chunk programs, and the drivers that run them over a whole call.

Tiles carry a leading batch dimension (sequences x value heads): [NH, C, K], [NH, C], [NH] for
per-chunk scalars. ``run_forward`` and ``run_backward`` take the same arguments as the references
and return the same results, so programs are checked against them directly.
"""
from __future__ import annotations

import torch

from gdnc.ir.program import Program
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.gates import pair_gate
from gdnc.reference.problem import Problem, fold_heads, prepare, start_state, unfold_heads


def execute(p: Program, env: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Run ``p`` once on input tiles; dims gives C (this chunk's length), K and V. Returns its
    outputs by name."""
    values = dict(env)
    like = next(t for t in env.values() if t.dim() >= 1)  # batch size, dtype and device of constants
    for op in p.ops:
        values[op.out] = _eval(op, [values[a] for a in op.args], dims, like)
    return {name: values[v] for name, v in p.outputs.items()}


def _rows(s, x):
    """Broadcast per-row s [NH, M] (or per-chunk [NH]) against x [NH, M, ...]."""
    return s.reshape(*s.shape, *([1] * (x.dim() - s.dim())))


def _eval(op, a, dims, like):
    k, at = op.kind, dict(op.attrs)
    if k == "const":
        shape = (like.shape[0], *(dims[d] for d in at["shape"]))
        return torch.full(shape, at["value"], dtype=like.dtype, device=like.device)
    if k == "gemm":
        x = a[0].transpose(-1, -2) if at.get("ta") else a[0]
        y = a[1].transpose(-1, -2) if at.get("tb") else a[1]
        return x @ y
    if k == "add":
        return a[0] + a[1]
    if k == "sub":
        return a[0] - a[1]
    if k == "mul":
        return a[0] * a[1]
    if k == "sum":
        return sum(a[1:], a[0])
    if k == "neg":
        return -a[0]
    if k == "scale":
        return a[0] * at["value"]
    if k in ("scale_rows", "scale_by"):
        return a[0] * _rows(a[1], a[0])
    if k == "scale_cols":
        return a[0] * a[1][:, None, :]
    if k == "exp":
        return a[0].exp() if at["base"] == "e" else torch.exp2(a[0])
    if k == "cumsum":
        x = a[0]
        if not at["exclusive"]:
            return x.flip(1).cumsum(1).flip(1) if at["reverse"] else x.cumsum(1)
        # exclusive sums start (or end) with an exact 0, not a difference that rounds to one
        zero = torch.zeros_like(x[:, :1])
        return torch.cat([x[:, 1:].flip(1).cumsum(1).flip(1), zero], 1) if at["reverse"] else \
            torch.cat([zero, x[:, :-1].cumsum(1)], 1)
    if k == "total":
        return a[0].sum(1)
    if k == "fill":
        return a[0].unsqueeze(1).expand(a[0].shape[0], dims["C"], *a[0].shape[1:])
    if k == "shift":
        z = torch.zeros_like(a[0][:, :1])
        return torch.cat([a[0][:, 1:], z], 1) if at["up"] else torch.cat([z, a[0][:, :-1]], 1)
    if k == "decay_mask":
        return pair_gate(a[0], a[0], at["mode"], at["base"])
    if k == "gated_inner":
        return torch.einsum("nik,njk,nijk->nij", a[0], a[1], pair_gate(a[2], a[3], at["mode"], at["base"]))
    if k == "gated_inner_grad":
        dy, x, y, la, lb = a
        gate = pair_gate(la, lb, at["mode"], at["base"])
        if at["wrt"] == "a":
            return torch.einsum("nij,njk,nijk->nik", dy, y, gate)
        if at["wrt"] == "b":
            return torch.einsum("nij,nik,nijk->njk", dy, x, gate)
        contrib = torch.einsum("nij,nik,njk,nijk->nijk", dy, x, y, gate)
        if at["wrt"] == "la":
            grad = contrib.sum(2)
            # "shifted" reads l_(i-1) in row i: its gradient belongs to token i-1
            return torch.cat([grad[:, 1:], torch.zeros_like(grad[:, :1])], 1) if at["mode"] == "shifted" else grad
        return -contrib.sum(1)
    if k == "decay_mask_grad":
        dG, G = a
        x = dG * G
        L = x.shape[-1]
        unit = {"inclusive": 0, "strict": None, "shifted": -1}[at["mode"]]
        if unit is not None:  # the constant-1 diagonal carries no gradient
            x = x * (1 - torch.ones(L, L, dtype=x.dtype, device=x.device).tril(unit).triu(unit))
        rows, cols = x.sum(2), x.sum(1)
        if at["mode"] == "shifted":
            rows = torch.cat([rows[:, 1:], torch.zeros_like(rows[:, :1])], 1)
        return rows - cols
    if k == "tri_inverse":
        m = a[0].tril(-1)
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
        return torch.linalg.solve_triangular(eye + m, eye, upper=False, unitriangular=True)
    if k == "tril":
        return a[0].tril(-1 if at["strict"] else 0)
    if k == "rowsum":
        return a[0].sum(2)
    if k == "colsum":
        return a[0].sum(1)
    if k == "sum_all":
        return a[0].flatten(1).sum(1)
    if k in ("cast", "hbm"):
        return a[0]  # float64 interpretation: dtypes are the kernels' business, values are exact
    raise ValueError(f"interpreter: unknown op {k}")


def _chunk_tiles(tensors: dict, names) -> dict[str, torch.Tensor]:
    """All-token tiles per input name, heads folded: [NH, T, ...]."""
    return {n: fold_heads(tensors[n]) for n in names}


def _run_chunk(p: Program, tiles, start, end, problem, extra):
    """Execute ``p`` on tokens [start, end) of ``tiles`` plus the per-chunk ``extra`` inputs."""
    env = {n: t[:, start:end] for n, t in tiles.items() if n in p.inputs}
    env.update(extra)
    return execute(p, env, {"C": end - start, "K": problem.K, "V": problem.V})


def run_forward(fwd: Program, problem: Problem, tensors: dict, h0, chunk_size: int):
    """Forward over one group of sequences: (o [N, T, HV, V], final state [N, HV, K, V])."""
    N, T = tensors["v"].shape[:2]
    names = [n for n in fwd.inputs if n in tensors]
    tiles = _chunk_tiles(tensors, names)
    NH = N * problem.HV
    ref = tiles["v"]
    state = start_state(h0, ref, problem.K, problem.V)
    scale = torch.full((NH,), problem.scale, dtype=ref.dtype, device=ref.device)
    outs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        res = _run_chunk(fwd, tiles, start, end, problem, {"S": state, "scale": scale})
        if "o" in res:
            outs.append(res["o"])
        state = res["S_new"]
    o = unfold_heads(torch.cat(outs, 1), N) if outs else None
    return o, state.reshape(N, problem.HV, problem.K, problem.V)


def run_backward(state_prog: Program, bwd: Program, problem: Problem, tensors: dict, h0, d_o, d_ht,
                 chunk_size: int) -> dict[str, torch.Tensor]:
    """Gradients of one group: the state-only program recomputes the chunk-start states, then the
    backward program runs over the chunks in reverse, carrying dS. Returns d<name> per input
    ([N, T, HV, ...] layouts) and dh0 [N, HV, K, V]."""
    N, T = tensors["v"].shape[:2]
    tiles = _chunk_tiles(tensors, list(tensors))
    NH = N * problem.HV
    ref = tiles["v"]
    state = start_state(h0, ref, problem.K, problem.V)
    starts = list(range(0, T, chunk_size))
    chunk_states = []
    for start in starts:
        chunk_states.append(state)
        end = min(start + chunk_size, T)
        state = _run_chunk(state_prog, tiles, start, end, problem, {"S": state})["S_new"]

    scale = torch.full((NH,), problem.scale, dtype=ref.dtype, device=ref.device)
    d_o_tiles = fold_heads(d_o)
    d_state = start_state(d_ht, ref, problem.K, problem.V)
    grads = {n: torch.zeros_like(t) for n, t in tiles.items()}
    for start, s0 in zip(reversed(starts), reversed(chunk_states)):
        end = min(start + chunk_size, T)
        extra = {"S": s0, "scale": scale, "d_o": d_o_tiles[:, start:end], "d_S_new": d_state}
        res = _run_chunk(bwd, tiles, start, end, problem, extra)
        for n in grads:
            if f"d_{n}" in res:
                grads[n][:, start:end] += res[f"d_{n}"]
        d_state = res["d_S"]
    out = {f"d{n}": unfold_heads(g, N) for n, g in grads.items()}
    out["dh0"] = d_state.reshape(N, problem.HV, problem.K, problem.V)
    return out


def program_forward(rec: Recurrence, forward: Program, q, k, v, *, scale=None, initial_state=None,
                    cu_seqlens=None, chunk_size=CHUNK_SIZE, **inputs):
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
                      scale=None, initial_state=None, cu_seqlens=None, chunk_size=CHUNK_SIZE, **inputs) -> dict:
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
    kinds = {"q": "key", "k": "key", "v": "value", **{spec.name: spec.kind for spec in rec.signature.inputs}}
    for name, kind in kinds.items():
        g = grads[f"d{name}"]
        if kind == "key":
            g = g.reshape(*g.shape[:2], H, group, *g.shape[3:]).sum(3)
        elif kind == "head":
            g = g.sum((0, 1))
        out[f"d{name}"] = g
    if initial_state is not None:
        out["dh0"] = grads["dh0"]
    return out
