"""Intra-card context parallelism for the forward: long sequences cut into segments that run in
parallel, each from a start state that is exact, or provably within e^τ of exact (the float64 math
and its tests are in gdnc.reference.segments).

Every step runs on the device with shapes the host knows (no host sync, so the op can be captured
in a CUDA graph). Sequence n's slot p covers tokens [cu_n + p·L, cu_n + (p+1)·L) clipped to the
sequence (possibly empty). A packed ``forward(v, h0, start, end, o) -> final`` over token ranges
(the generated kernel, or the chunked reference in tests) runs three times:

    1. warm-up: for every boundary (the start b of a non-empty slot p >= 1), the state at b from a
       zero start over a window [a, b) of whole chunks: the fewest chunks whose decay is at most τ
       in every head (shortcut), or the whole previous segment (then the window's end state is
       that segment's S_ext, and the boundary is "exact")
    2. transitions: for exact boundaries only, the previous segment's K×K transition M, as the same
       forward with v = 0 from S = I (the state map is linear in S); empty ranges elsewhere
    3. the chain S_start(p) = M_p S_start(p-1) + W_p (M_p = 0 at shortcut boundaries), batched over
       sequences, then every slot from its start state: o for every token, and each sequence's
       final state from its last non-empty slot

The shortcut drops M_p S_start(p-1), whose norm is at most e^{decay of the window} ‖S_start‖ when
every transition α_t (I − β_t k_t k_tᵀ) in the window has norm at most α_t, that is when
0 <= β_t ‖k_t‖² <= 2. That is checked on the window's tokens (``non_expansive``); where it fails,
or where no window of up to max_warmup_chunks reaches τ (g = 0 heads), the boundary is exact.

Slot boundaries are multiples of the chunk from their sequence's start, so the chunking — and
whatever gdn_prepare computed per chunk — is that of the unsplit call.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from gdnc.plan import ForwardPlan, SplitConfig


class Slots(NamedTuple):
    """Token ranges of every slot, [P, N] int32 (slot p of sequence n), and the warm-up plan."""

    start: torch.Tensor
    end: torch.Tensor
    window_start: torch.Tensor  # warm-up window [window_start, start) before each slot
    exact: torch.Tensor  # bool: this slot's start state is chained exactly (needs M)


def non_expansive(k: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per token and value head, whether the transition I − β k kᵀ has spectral norm at most 1
    (0 <= β ‖k‖² <= 2). k: [..., H, K]; beta: [..., HV] -> bool [..., HV]."""
    group = beta.shape[-1] // k.shape[-2]
    norm_dtype = torch.promote_types(k.dtype, torch.float32)  # bf16 k is summed in fp32, not copied
    norm2 = torch.linalg.vector_norm(k, dim=-1, dtype=norm_dtype).square()
    erase = beta * (norm2.repeat_interleave(group, -1) if group > 1 else norm2)
    return (erase - 1).abs() <= 1


def plan_slots(cu: torch.Tensor, l2_gate: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, plan: ForwardPlan,
               config: SplitConfig = SplitConfig(), chunk: int = 64) -> Slots:
    """The slots of the packed sequences ``cu`` [N + 1] and, for each, its warm-up window.

    l2_gate: [tokens, HV] gdn_prepare's cumulative log2 gate within each chunk, so its value at a
    chunk's last token is the chunk's decay (log2); k: [tokens, H, K]; beta: [tokens, HV]. A
    window of n whole chunks before a boundary has the sum of their decays; the shortest whose
    decay is <= τ (natural log) in every head, and whose transitions are all non-expansive, is
    taken. Only the W = min(L / C, max_warmup_chunks) chunks before each boundary are read."""
    # few, small launches: in a captured graph each costs its latency, whatever its size
    L, P = plan.segment_len, plan.slots
    cu = cu.long()
    start = torch.minimum(cu[:-1] + torch.arange(0, P * L, L, device=cu.device)[:, None], cu[1:])  # [P, N]
    end = torch.minimum(start + L, cu[1:])
    W = min(L // chunk, config.max_warmup_chunks)
    boundary = start[1:]  # [P - 1, N]; a non-empty slot p >= 1 follows a full slot p - 1
    before = (boundary[..., None] - torch.arange(1, W * chunk + 1, device=cu.device)).clamp_min(0)  # b-1, b-2, ...
    chunk_decay = l2_gate[before[..., ::chunk]].double()  # [P - 1, N, W, HV]: each chunk's last token
    reached = (chunk_decay.cumsum(2) <= config.tau * math.log2(math.e)).all(-1)  # window of w + 1 chunks
    contracting = non_expansive(k[before], beta[before]).view(*before.shape[:2], W, chunk * beta.shape[-1]).all(-1)
    usable = reached & (contracting.int().cumprod(2) > 0)  # every chunk of the window contracts
    shortcut = usable.any(-1)
    first = usable.int().argmax(-1)  # the shortest usable window
    chained = boundary < end[1:]
    exact = chained & ~shortcut
    window = torch.where(shortcut, boundary - chunk * (first + 1), start[:-1])
    window = torch.where(chained, window, boundary)  # empty slots: an empty window
    i32 = torch.int32
    return Slots(start.to(i32), end.to(i32), torch.cat([start[:1], window]).to(i32),
                 torch.cat([torch.zeros_like(exact[:1]), exact]))


_ZEROS: dict[tuple, list[torch.Tensor]] = {}


def zeros_like_kept(x: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like x, from buffers kept between calls per device and dtype: the
    transition pass only reads it, and a fresh one would cost a memset of v's size every call.
    A kept buffer is never freed, since a captured CUDA graph may read it; one made during
    capture is not kept, since capture does not run its memset."""
    kept = _ZEROS.setdefault((x.device, x.dtype), [])
    buf = next((b for b in kept if b.numel() >= x.numel()), None)
    if buf is None:
        buf = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
        if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            kept.append(buf)
    return buf[:x.numel()].view(x.shape)


def split_forward(forward, v: torch.Tensor, h0: torch.Tensor | None, slots: Slots, o: torch.Tensor):
    """o (written into ``o`` [tokens, HV, V]) and the final states [N, HV, K, V] of the packed call,
    segment-parallel over ``slots`` (plan_slots). v: [tokens, HV, V]; h0: [N, HV, K, V] or None.
    The states, transitions and chain are in h0's dtype (fp32 without h0; the kernels' state dtype).

    forward(v, h0, start, end, o) -> final runs the packed forward over the token ranges
    [start_i, end_i) (int32 [S]) from h0 [S, HV, K, V], writes o's rows of those ranges and returns
    the end states [S, HV, K, V]; an empty range returns its h0."""
    P, N = slots.start.shape
    HV, V = v.shape[1:]
    K = V if h0 is None else h0.shape[2]
    if K != V:
        raise ValueError(f"split_forward measures the K×K transition with a K-wide state pass, so it needs "
                         f"K = V, got K={K}, V={V}")
    dtype = torch.float32 if h0 is None else h0.dtype
    flat = lambda x: x.reshape(P * N)  # noqa: E731  slot p of sequence n is range p·N + n
    scratch = torch.empty_like(o)  # the summary passes' outputs, never read
    zeros = torch.zeros(P * N, HV, K, V, dtype=dtype, device=v.device)
    warm = forward(v, zeros, flat(slots.window_start), flat(slots.start), scratch).view(P, N, HV, K, V)
    exact = slots.exact[..., None, None, None]
    eye = (torch.eye(K, dtype=dtype, device=v.device) * exact).expand(P, N, HV, K, K)  # zero if not exact
    transition = forward(zeros_like_kept(v), eye.reshape(P * N, HV, K, K).contiguous(),
                         flat(torch.where(slots.exact, slots.window_start, slots.start)), flat(slots.start),
                         scratch).view(P, N, HV, K, K)
    starts = torch.empty(P, N, HV, K, V, dtype=dtype, device=v.device)
    starts[0] = 0 if h0 is None else h0
    for p in range(1, P):
        torch.baddbmm(warm[p].view(N * HV, K, V), transition[p].view(N * HV, K, K),
                      starts[p - 1].view(N * HV, K, V), out=starts[p].view(N * HV, K, V))
    finals = forward(v, starts.view(P * N, HV, K, V), flat(slots.start), flat(slots.end), o).view(P, N, HV, K, V)
    # a sequence's non-empty slots come first: its last one holds its final state
    return finals[(slots.end > slots.start).long().sum(0) - 1, torch.arange(N, device=v.device)]
