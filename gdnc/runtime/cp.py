"""Intra-card context parallelism for the forward: long sequences cut into segments that run in
parallel, each from a start state that is exact, or provably within e^τ of exact (the float64 math
and its tests are in gdnc.reference.segments).

Every step runs on the device with shapes the host knows (no host sync, so the op can be captured
in a CUDA graph). Sequence n's slot p covers tokens [cu_n + p·L, cu_n + (p+1)·L) clipped to the
sequence (possibly empty). The plan (the cp_plan kernel, or plan_slots, its torch reference)
reads only gdn_prepare's outputs. A packed forward over token ranges (``split_forward``'s
``forward``: the generated kernel, or the chunked reference in tests) runs three times, and each
pass writes only the end states the next step reads:

    1. warm-up: for every boundary (the start b of a non-empty slot p >= 1), the state at b from a
       zero start over a window [a, b) of whole chunks: the fewest chunks whose decay is at most τ
       in every head (shortcut), or the whole previous segment (then the window's end state is
       that segment's S_ext, and the boundary is "exact"), from a zero start that is not read
    2. transitions: for exact boundaries only, the previous segment's K×K transition M, as the same
       forward with v = 0 from S = I (the state map is linear in S); empty ranges, which read and
       write nothing, elsewhere
    3. the chain S_start(p) = M_p S_start(p-1) + W_p (M_p dropped at shortcut boundaries; the
       cp_chain kernel, or chain_reference), in place over the warm-up states, then every slot
       from its start state: o for every token, and each sequence's final state from its last
       non-empty slot, written straight into the call's final states

The shortcut drops M_p S_start(p-1), whose norm is at most e^{decay of the window} ‖S_start‖ when
every transition α_t (I − β_t k_t k_tᵀ) in the window has norm at most α_t, that is when
0 <= β_t ‖k_t‖² <= 2 (``non_expansive``; gdn_prepare's ``contracts`` says it per chunk). Where it
fails, or where no window of up to max_warmup_chunks reaches τ (g = 0 heads), the boundary is exact.

Slot boundaries are multiples of the chunk from their sequence's start, so the chunking — and
whatever gdn_prepare computed per chunk — is that of the unsplit call.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.runtime.buffers import kept_identity, kept_range, kept_zeros
from gdnc.runtime.plan import Split


class Slots(NamedTuple):
    """Every slot's token range and warm-up plan, [P, N] int32 (slot p of sequence n, the range
    p·N + n of the passes), and where each sequence's final state is."""

    start: torch.Tensor
    end: torch.Tensor
    window_start: torch.Tensor  # warm-up window [window_start, start) before each slot
    exact: torch.Tensor  # 1: this slot's start state is chained exactly (needs M), else 0
    transition_start: torch.Tensor  # the transition pass's range [transition_start, start): empty unless exact
    transition_row: torch.Tensor  # where the transition pass writes the slot's M: its range p·N + n if exact, else −1
    final_row: torch.Tensor  # where the last pass writes the slot's end state: n at sequence n's final slot, else −1


def plan_slots(cu: torch.Tensor, l2_gate: torch.Tensor, contracts: torch.Tensor, split: Split) -> Slots:
    """The slots of the packed sequences ``cu`` [N + 1] and, for each, its warm-up window: the torch
    reference of the cp_plan kernel (run_planner), which computes the same, bit for bit.

    l2_gate: [tokens, HV] gdn_prepare's cumulative log2 gate within each chunk, so its value at a
    chunk's last token is the chunk's decay (log2); contracts: [tokens, HV] gdn_prepare's flag,
    read at chunks' first rows only (1.0: every transition of the chunk is non-expansive). A
    window of w + 1 whole chunks before a boundary has the sum of their decays (in fp64); the
    shortest whose decay is <= τ in every head, and whose chunks all contract, is taken. Only the
    W chunks before each boundary are read (Split.window_limits)."""
    L, P, chunk = split.segment_len, split.slots, CHUNK_SIZE
    W, tau2 = split.window_limits()
    cu = cu.long()
    start = torch.minimum(cu[:-1] + torch.arange(0, P * L, L, device=cu.device)[:, None], cu[1:])  # [P, N]
    end = torch.minimum(start + L, cu[1:])
    boundary = start[1:]  # [P - 1, N]; a non-empty slot p >= 1 follows a full slot p - 1
    chunk_end = boundary[..., None] - chunk * torch.arange(W, device=cu.device)  # window chunk w: [end − C, end)
    reached = (l2_gate[(chunk_end - 1).clamp_min(0)].double().cumsum(2) <= tau2).all(-1)  # window of w + 1 chunks
    contracting = (contracts[(chunk_end - chunk).clamp_min(0)] == 1).all(-1)
    usable = reached & (contracting.int().cumprod(2) > 0)  # every chunk of the window contracts
    shortcut = usable.any(-1)
    first = usable.int().argmax(-1)  # the shortest usable window
    chained = boundary < end[1:]
    exact = torch.cat([torch.zeros_like(chained[:1]), chained & ~shortcut])
    window = torch.where(shortcut, boundary - chunk * (first + 1), start[:-1])
    window_start = torch.cat([start[:1], torch.where(chained, window, boundary)])  # empty slots: an empty window
    # the last non-empty slot; slot 0 (empty: its start state, h0) for an empty sequence
    N = cu.numel() - 1
    final_slot = ((cu[1:] - cu[:-1] + L - 1) // L).clamp_min(1) - 1  # [N]
    rows = torch.arange(P * N, device=cu.device).view(P, N)
    slot = torch.arange(P, device=cu.device)[:, None]
    i32 = torch.int32
    return Slots(start.to(i32), end.to(i32), window_start.to(i32), exact.to(i32),
                 torch.where(exact, window_start, start).to(i32), torch.where(exact, rows, -1).to(i32),
                 torch.where(slot == final_slot, rows % N, -1).to(i32))


def run_planner(kernel, cu: torch.Tensor, l2_gate: torch.Tensor, contracts: torch.Tensor, split: Split) -> Slots:
    """plan_slots on the device: the compiled cp_plan kernel, one launch, on the same arguments
    (cu int32; every output element is written)."""
    P, N = split.slots, cu.numel() - 1
    slots = Slots(*(torch.empty(P, N, dtype=torch.int32, device=cu.device) for _ in Slots._fields))
    window_chunks, tau2 = split.window_limits()
    kernel(cu_seqlens=cu, l2_gate=l2_gate, contracts=contracts, segment_len=split.segment_len,
           window_chunks=window_chunks, tau2=tau2, **slots._asdict())
    return slots


def chain_reference(states: torch.Tensor, transition: torch.Tensor, exact: torch.Tensor,
                    initial_state: torch.Tensor) -> None:
    """The cp_chain kernel in torch, in place: states [P·N, HV, K, V] go from every slot's warm-up
    end state to its start state, states[p·N + n] += M_p states[(p−1)·N + n] where exact[p, n]
    ([P, N] int), after states[n] = initial_state[n] ([N, HV, K, V]); transition [P·N, HV, K, K]."""
    P, N = exact.shape
    states = states.view(P, N, *states.shape[1:])
    transition = transition.view(P, N, *transition.shape[1:])
    states[0] = initial_state
    for p in range(1, P):
        states[p] += torch.where(exact[p].bool()[:, None, None, None], transition[p] @ states[p - 1], 0)


def split_forward(forward, chain, v: torch.Tensor, h0: torch.Tensor | None, slots: Slots, o: torch.Tensor, empty):
    """o (written into ``o`` [tokens, HV, V]) and the final states [N, HV, K, V] of the packed call,
    segment-parallel over ``slots`` (plan_slots or run_planner). v: [tokens, HV, V]; h0:
    [N, HV, K, V] or None. The states, transitions and chain are in h0's dtype (fp32 without h0;
    the kernels' state dtype), in buffers from ``empty(*shape, dt=dtype)`` (buffers.output_allocator).

    forward(v, h0, start, end, o, final, final_row) runs the packed forward over the token ranges
    [start_r, end_r) (int32 [R]) from h0[r] ([R, HV, K, V]; None: from zero, not read), writes o's
    rows of those ranges, and writes range r's end state to final[final_row[r]] where
    final_row[r] >= 0 (int32 [R]); an empty range ends in its start state.
    chain(states, transition, exact, initial_state) is chain_reference or the cp_chain kernel (same
    arguments, by name)."""
    P, N = slots.start.shape
    HV, V = v.shape[1:]
    K = V if h0 is None else h0.shape[2]
    if K != V:
        raise ValueError(f"split_forward measures the K×K transition with a K-wide state pass, so it needs "
                         f"K = V, got K={K}, V={V}")
    dtype, device = (torch.float32 if h0 is None else h0.dtype), v.device
    flat = lambda x: x.reshape(P * N)  # noqa: E731  slot p of sequence n is range p·N + n
    scratch = torch.empty_like(o)  # the summary passes' outputs, never read
    states = empty(P * N, HV, K, V, dt=dtype)
    forward(v, None, flat(slots.window_start), flat(slots.start), scratch, states, kept_range(P * N, device))
    # only exact ranges are non-empty and write their M; the chain reads no other
    transition = empty(P * N, HV, K, K, dt=dtype)
    forward(kept_zeros(v.shape, v.dtype, device), kept_identity((P * N, HV, K, K), dtype, device),
            flat(slots.transition_start), flat(slots.start), scratch, transition, flat(slots.transition_row))
    chain(states=states, transition=transition, exact=slots.exact,
          initial_state=kept_zeros((N, HV, K, V), dtype, device) if h0 is None else h0)
    final = empty(N, HV, K, V, dt=dtype)
    forward(v, states, flat(slots.start), flat(slots.end), o, final, flat(slots.final_row))
    return final
