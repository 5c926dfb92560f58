"""Intra-card context parallelism for the forward: long sequences split into segments that run in
parallel, then chained exactly (gdnc.reference.segments has the float64 math and its tests).

Three passes of one packed forward — any callable ``forward(v, h0, cu) -> (o, final_state)`` over
fixed q, k, g, β (the kernel path, or the chunked reference in tests):

    1. per segment from a zero start: the end state S_ext (the real v), and the transition M — the
       same pass with v = 0 from S = I, since the state map is linear in S (the state is then
       K×K, so this needs V = K)
    2. per sequence, in order: S_start(s+1) = M_s S_start(s) + S_ext,s, on the device, in the
       forward's state dtype (fp32 for the kernels)
    3. every segment from its start state: o for all tokens, each sequence's final state from its
       last segment

Segment boundaries are multiples of the chunk from their sequence's start, so the chunking — and
whatever a forward prepares per chunk (the gate-free inverse, the log2 gate) — is the same as
unsplit.
"""
from __future__ import annotations

import torch

from gdnc.reference.segments import split


def split_forward(forward, v, h0, seqlens: list[int], segment_len: int):
    """o [1, T, HV, V] and the final states [N, HV, K, V] (fp32) of the packed call with offsets
    ``seqlens`` (host list), computed segment-parallel. v: [1, T, HV, V]; h0: [N, HV, K, V] or None."""
    segments = split(seqlens, segment_len)
    device, T, HV, V = v.device, v.shape[1], v.shape[2], v.shape[3]
    K = V if h0 is None else h0.shape[2]
    if K != V:
        raise ValueError(f"split_forward measures the K×K transition with a K-wide state pass, so it needs "
                         f"K = V, got K={K}, V={V}")
    cu = torch.tensor([s.start for s in segments] + [segments[-1].end], dtype=torch.int32, device=device)
    S = len(segments)
    eye = torch.eye(K, dtype=torch.float32, device=device).expand(S, HV, K, K).contiguous()
    _, transition = forward(torch.zeros_like(v), eye, cu)
    _, s_ext = forward(v, torch.zeros(S, HV, K, V, dtype=torch.float32, device=device), cu)

    first = {}
    for i, seg in enumerate(segments):
        first.setdefault(seg.sequence, i)
    counts = [sum(1 for s in segments if s.sequence == n) for n in range(len(seqlens) - 1)]
    # the chain runs in the forward's state dtype (fp32 from the kernels)
    starts = torch.zeros(S, HV, K, V, dtype=s_ext.dtype, device=device)
    if h0 is not None:
        starts[torch.tensor([first[n] for n in range(len(counts))], device=device)] = h0.to(s_ext.dtype)
    for j in range(1, max(counts)):  # segment j of every sequence that has one, all sequences at once
        index = torch.tensor([first[n] + j for n, c in enumerate(counts) if c > j], device=device)
        starts[index] = transition[index - 1] @ starts[index - 1] + s_ext[index - 1]
    o, finals = forward(v, starts, cu)
    last = torch.tensor([first[n] + c - 1 for n, c in enumerate(counts)], device=device)
    return o, finals[last]
