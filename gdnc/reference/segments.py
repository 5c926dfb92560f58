"""Context parallelism in float64: a sequence split into segments that run independently, then chained.

Every recurrence gdnc accepts is affine in its state (gdnc.ir.canonical): over a segment,
S_end = M S_start + S_ext, where S_ext is the segment's end state from a zero start and M (K x K)
its transition — the product of the per-chunk transitions γ_L (I − Dᵀ A diag(β) R). So

    S_start(s+1) = M_s S_start(s) + S_ext,s          (exact; keep M in fp32 or better)

gives every segment its starting state, after which all segments run in parallel from it. The
backward chains the other way, with the transposed transitions: dS_end(s) = M_{s+1}ᵀ dS_end(s+1) +
e_{s+1}, e the state gradient a segment's own outputs give its start (``segmented_gradients``).
M is measured here as the map S ↦ S_end(S) − S_end(0) applied to the identity, with the write
value zeroed (the write is linear in v for every recurrence of the family); this keeps one
reference executor for all variants.

Gate-driven shortcut: if the decay accumulated over the last chunks of a segment is below τ, the
state entering the segment contributes at most e^τ ‖S‖ to its end state — provided each
(I − β k kᵀ) is non-expansive, 0 <= β ‖k‖² <= 2 (true for ‖k‖ = 1 and 0 <= β <= 2);
``shortcut_bound`` checks that on the data instead of assuming it.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from gdnc.ir.recurrence import Recurrence
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.chunked_form import chunked


@dataclasses.dataclass
class Segment:
    """One segment of one sequence: tokens [start, end) of the packed call."""

    sequence: int
    start: int
    end: int


def split(seqlens: list[int], segment_len: int) -> list[Segment]:
    """Cut each sequence of the packed offsets ``seqlens`` (cu_seqlens as a list) into segments of
    ``segment_len`` tokens (the last one shorter)."""
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    return [Segment(n, s, min(s + segment_len, b)) for n, (a, b) in enumerate(zip(seqlens[:-1], seqlens[1:]))
            for s in range(a, b, segment_len)]


def _pieces(tensors: dict, segments: list[Segment]) -> list[dict]:
    """Each segment's arguments by name: the per-token tensors ([1, T, ...]) cut to its tokens, the
    per-head ones ([HV]) whole."""
    return [{name: x[:, seg.start:seg.end] if x.dim() > 1 else x for name, x in tensors.items()} for seg in segments]


def _chain(rec: Recurrence, pieces: list[dict], h0, chunk_size: int, dtype):
    """(summaries, start states, end state) of one sequence's segments, given their arguments."""
    summaries = [segment_summary(rec, t["q"], t["k"], t["v"],
                                 {n: x for n, x in t.items() if n not in ("q", "k", "v")},
                                 chunk_size=chunk_size, dtype=dtype) for t in pieces]
    starts, final = chained_states(summaries, h0)
    return summaries, starts, final


def segment_summary(rec: Recurrence, q, k, v, inputs: dict, *, chunk_size=CHUNK_SIZE, dtype=torch.float64):
    """(S_ext [HV, K, V], M [HV, K, K]) of one unsplit segment (B = 1 tensors of that segment only)."""
    HV, K = v.shape[2], q.shape[3]
    _, s_ext = chunked(rec, q, k, v, output_final_state=True, chunk_size=chunk_size, dtype=dtype, **inputs)
    no_write = torch.zeros(*v.shape[:3], K, dtype=v.dtype, device=v.device)
    eye = torch.eye(K, dtype=dtype, device=v.device).expand(1, HV, K, K)
    _, m = chunked(rec, q, k, no_write, initial_state=eye, output_final_state=True, chunk_size=chunk_size,
                   dtype=dtype, **inputs)
    return s_ext[0], m[0]


def chained_states(summaries, h0):
    """Chain segment summaries of one sequence: the start state of every segment and the end state.

    summaries: [(S_ext [HV, K, V], M [HV, K, K])] in order; h0: [HV, K, V] or None.
    """
    state = torch.zeros_like(summaries[0][0]) if h0 is None else h0
    starts = []
    for s_ext, m in summaries:
        starts.append(state)
        state = m @ state + s_ext
    return starts, state


def segmented(rec: Recurrence, q, k, v, *, segment_len: int, scale=None, initial_state=None,
              output_final_state=False, cu_seqlens=None, chunk_size=CHUNK_SIZE, dtype=torch.float64, **inputs):
    """The chunked reference run the context-parallel way: summaries per segment, the chain, then
    every segment from its chained start state. Same arguments and results as
    gdnc.reference.chunked (B = 1), plus ``segment_len``."""
    if q.shape[0] != 1:
        raise ValueError(f"segmented runs take packed sequences (B = 1), got B = {q.shape[0]}")
    T = q.shape[1]
    seqlens = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    segments = split(seqlens, segment_len)
    outs, finals = [], []
    for n in range(len(seqlens) - 1):
        pieces = _pieces({"q": q, "k": k, "v": v, **inputs}, [s for s in segments if s.sequence == n])
        h0 = None if initial_state is None else initial_state[n].to(dtype)
        _, starts, final = _chain(rec, pieces, h0, chunk_size, dtype)
        finals.append(final)
        for t, start in zip(pieces, starts):
            o, _ = chunked(rec, t.pop("q"), t.pop("k"), t.pop("v"), scale=scale, initial_state=start[None],
                           chunk_size=chunk_size, dtype=dtype, **t)
            outs.append(o)
    final_state = torch.stack(finals) if output_final_state else None
    return torch.cat(outs, 1), final_state


def segmented_gradients(rec: Recurrence, q, k, v, d_o, *, segment_len: int, d_final=None, scale=None,
                        initial_state=None, cu_seqlens=None, chunk_size=CHUNK_SIZE, dtype=torch.float64,
                        **inputs) -> dict:
    """The gradients of sum(d_o · o) + sum(d_final · final_state) computed the context-parallel way
    backward (gdn-math.md §5): every segment's state gradient dS_start from its own outputs alone
    (e_s, the segments independent of each other), the chain in reverse through the transposed
    transitions,

        dS_end(s) = M_{s+1}ᵀ dS_end(s+1) + e_{s+1},   dS_end(last) = d_final,

    then every segment's gradients from its chained dS_end (again independent). Same arguments as
    ``segmented`` (B = 1) plus d_o [1, T, HV, V] and d_final [N, HV, K, V] (None: zero). Returns
    {"q": dq, "k": dk, "v": dv, <each input>: its gradient, "initial_state": dh0} (dh0 only with an
    initial_state)."""
    if q.shape[0] != 1:
        raise ValueError(f"segmented runs take packed sequences (B = 1), got B = {q.shape[0]}")
    T, HV, K, V = q.shape[1], v.shape[2], q.shape[3], v.shape[3]
    seqlens = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    tensors = {"q": q, "k": k, "v": v, **inputs}
    per_token = [n for n, x in tensors.items() if x.dim() > 1]
    grads = {n: torch.zeros(x.shape, dtype=dtype, device=x.device) for n, x in tensors.items()}
    dh0 = []
    for n in range(len(seqlens) - 1):
        segments = [seg for seg in split(seqlens, segment_len) if seg.sequence == n]
        pieces = [{name: x.to(dtype) for name, x in t.items()} for t in _pieces(tensors, segments)]
        h0 = None if initial_state is None else initial_state[n].to(dtype)
        summaries, starts, _ = _chain(rec, pieces, h0, chunk_size, dtype)

        def segment_grads(t, start, seg, d_end):
            """Gradients of one segment run from ``start`` (its inputs and its start state)."""
            live = {name: x.detach().requires_grad_(True) for name, x in t.items()}
            state = start.detach()[None].requires_grad_(True)
            o, end = chunked(rec, live["q"], live["k"], live["v"], scale=scale, initial_state=state,
                             output_final_state=True, chunk_size=chunk_size, dtype=dtype,
                             **{m: live[m] for m in inputs})
            loss = (o * d_o[:, seg.start:seg.end].to(dtype)).sum()
            if d_end is not None:
                loss = loss + (end[0] * d_end).sum()
            found = torch.autograd.grad(loss, [*live.values(), state])
            return dict(zip(live, found[:-1])), found[-1][0]

        # pass 1, segments independent: e_s, each segment's dS_start from its own outputs
        local = [segment_grads(t, start, seg, None)[1] for t, start, seg in zip(pieces, starts, segments)]
        # the chain, in reverse, through the transposed transitions
        d_end = [None] * len(segments)
        d_end[-1] = None if d_final is None else d_final[n].to(dtype)
        for i in range(len(segments) - 2, -1, -1):
            m_next = summaries[i + 1][1]
            after = torch.zeros(HV, K, V, dtype=dtype, device=q.device) if d_end[i + 1] is None else d_end[i + 1]
            d_end[i] = m_next.transpose(-1, -2) @ after + local[i + 1]
        # pass 2, segments independent again: every gradient from the chained dS_end
        for i, (t, start, seg) in enumerate(zip(pieces, starts, segments)):
            found, d_start = segment_grads(t, start, seg, d_end[i])
            for name, g in found.items():
                if name in per_token:
                    grads[name][:, seg.start:seg.end] += g
                else:
                    grads[name] += g
            if i == 0:
                dh0.append(d_start)
    if initial_state is not None:
        grads["initial_state"] = torch.stack(dh0)
    return grads


def non_expansive(k: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per token and value head, whether the transition I − β k kᵀ has spectral norm at most 1
    (0 <= β ‖k‖² <= 2). k: [..., H, K]; beta: [..., HV] -> bool [..., HV]."""
    group = beta.shape[-1] // k.shape[-2]
    norm_dtype = torch.promote_types(k.dtype, torch.float32)  # bf16 k is summed in fp32, not copied
    norm2 = torch.linalg.vector_norm(k, dim=-1, dtype=norm_dtype).square()
    erase = beta * (norm2.repeat_interleave(group, -1) if group > 1 else norm2)
    return (erase - 1).abs() <= 1


def shortcut_bound(k, beta, log_decay_tail: torch.Tensor):
    """The bound e^τ on how much a segment's start state can reach its end state, where τ is the
    decay accumulated over the segment's tail (log_decay_tail: the per-token log gates of the
    tail, [..., n]); None when its assumption fails on these inputs (every I − β k kᵀ
    non-expansive: 0 <= β ‖k‖² <= 2, non_expansive), in which case the exact chain must be used.
    k: [B, T, H, K]; beta: [B, T, HV]."""
    if not bool(non_expansive(k, beta).all()):
        return None
    tau = log_decay_tail.double().sum(-1).max().item()
    return math.exp(tau)
