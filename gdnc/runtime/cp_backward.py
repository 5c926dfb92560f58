"""Intra-card context parallelism for the backward (gdn-math.md §5): every sequence cut into slots
of segment_len tokens whose backward runs side by side, each from its start state and the gradient
of the state at its end, both chained exactly or within the gate shortcut's bound. The float64
math and its tests: gdnc.reference.segments (segmented_gradients); this module drives the kernels
(or, in tests, references of them) through it.

    1. start states, as the forward's split makes them (gdnc.runtime.cp, the same slots and plan):
       each slot's warm-up from zero over its window, the exact chain through the previous slot's
       transition M where the window is that whole slot; then every slot's chunk-start states Ŝ
    2. local state gradients: e_p, the gradient of the state at slot p's start from a zero gradient
       at its end (the chain of dS alone over the slot: 6 of the backward's 21 GEMMs a chunk)
    3. the reverse chain, in fp32: D_last = dht, D_p = e_{p+1} + M_{p+1}ᵀ D_{p+1}, D_p being the
       gradient of the state at slot p's end. The shortcut drops M_{p+1}ᵀ D_{p+1} where slot p + 1
       decays by τ or more in every head and each of its transitions is non-expansive: its norm is
       then at most e^τ ‖D_{p+1}‖ (the forward's bound, gdnc.runtime.cp, with ‖Mᵀ‖ = ‖M‖). A slot
       past its sequence's end is empty, with e = 0 and M = I, so dht passes through it
    4. the backward over every slot from D_p and its start state: every token's gradients once, and
       dh0 from slot 0

One forward pass measures every transition either chain needs (the others are empty ranges).
Slot boundaries are multiples of the chunk from their sequence's start, so the chunking, and what
gdn_prepare computed per chunk, is the unsplit call's. Every step runs on the device with shapes
the host knows (no sync: a backward can be captured in a CUDA graph).
"""
from __future__ import annotations

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.runtime.buffers import kept_nowhere, kept_range, kept_rows, kept_zeros
from gdnc.runtime.cp import Slots


def reverse_shortcuts(cu: torch.Tensor, l2_gate: torch.Tensor, contracts: torch.Tensor, start: torch.Tensor,
                      end: torch.Tensor, tau2: float) -> torch.Tensor:
    """[P, N] bool: where the reverse chain may drop slot p's M_pᵀ D_p — slot p (of [start, end), [P, N])
    has tokens, its decay (log2) is at most ``tau2`` in every head, and every chunk of it contracts.

    l2_gate, contracts: gdn_prepare's [tokens, HV] outputs (the cumulative log2 gate within each chunk,
    so a chunk's decay is its value at the chunk's last token; 1.0 at a chunk's first row where every
    transition of the chunk is non-expansive, other rows unread); cu: [N + 1] offsets."""
    tokens, device = l2_gate.shape[0], l2_gate.device
    t = kept_rows(("token index", device), tokens, lambda r: torch.arange(r, device=device))
    cu = cu.long()
    offset = t - cu[torch.searchsorted(cu, t, right=True) - 1]  # from the token's sequence start
    last = ((offset + 1) % CHUNK_SIZE == 0) | torch.isin(t, cu[1:] - 1)  # each chunk's last token
    first = offset % CHUNK_SIZE == 0
    # running sums along the tokens as the inner dimension: torch scans an outer dimension of 32 K rows
    # in milliseconds, an inner one in microseconds
    decay = torch.where(last[:, None], l2_gate.double(), 0.0).t().cumsum(1)  # [HV, tokens]
    expanding = (first[:, None] & (contracts != 1)).t().int().cumsum(1)

    def over_slots(running):  # a per-token quantity summed over each slot, [P, N, HV]
        running = torch.cat([torch.zeros_like(running[:, :1]), running], 1)
        return (running[:, end.long()] - running[:, start.long()]).permute(1, 2, 0)

    return (end > start) & (over_slots(decay) <= tau2).all(-1) & (over_slots(expanding) == 0).all(-1)


def chunk_rows(cu: torch.Tensor, sequence_rows: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[P, N] int32: the row of each slot's first chunk state Ŝ in a states buffer whose sequence n
    starts at ``sequence_rows[n]`` (backward.state_slots), for slots starting at ``start`` [P, N]."""
    return (sequence_rows[:-1] + torch.div(start - cu[:-1], CHUNK_SIZE, rounding_mode="floor")).int()


def split_backward(summary, states, local_gradient, backward, chain, slots: Slots, shortcut: torch.Tensor,
                   chunk_row, h0, dht, shape, empty, want_dh0: bool) -> torch.Tensor | None:
    """The backward of the packed call over ``slots`` (gdnc.runtime.cp: plan_slots or run_planner, the
    forward's plan of warm-up windows and exact boundaries), with the reverse chain's ``shortcut``
    ([P, N] bool, reverse_shortcuts) and each slot's chunk-start states at ``chunk_row`` [P, N]
    (chunk_rows). Returns dh0 [N, HV, K, V] (None unless ``want_dh0``); the token gradients are
    written by ``backward``.

    shape: (HV, K, V) (K = V: the transitions are measured with a K-wide state pass); h0, dht:
    [N, HV, K, V] or None (zero). The start states, transitions and both chains are in h0's dtype
    (fp32 without h0; the kernels' state dtype), in buffers from ``empty(*shape, dt=)``
    (buffers.output_allocator).
    The passes, each over token ranges [start_r, end_r) (int32 [R]):
      summary(transitions, start, end, out, out_row): the forward over range r (gdn_forward), its end
          state to out[out_row[r]]: from zero with the call's values, or (``transitions``) from S = I
          with v = 0, which ends in the range's transition M (I for an empty range)
      states(h0, start, end, chunk_row): the chunk-start states of range r from h0[r], its chunk c's at
          chunk_row[r] + c of the buffer the backward reads
      local_gradient(start, end, out_row, out): gdn_backward built state_gradient_only: the gradient of
          range r's start state from a zero gradient at its end, to out[out_row[r]]
      backward(start, end, chunk_row, h0, dht, dh0_row, dh0): gdn_backward's contract: range r from the
          end gradient dht[r] (None: zero) and start state h0[r], every token's gradients, and the
          gradient of its start state to dh0[dh0_row[r]] where dh0_row[r] >= 0
      chain(states, transition, exact, initial_state): the cp_chain kernel (or cp.chain_reference)
    """
    HV, K, V = shape
    if K != V:
        raise ValueError(f"split_backward measures the K×K transition with a K-wide state pass, so it needs K = V, "
                         f"got K={K}, V={V}")
    start, end, exact = slots.start, slots.end, slots.exact
    P, N = start.shape
    R, device = P * N, start.device
    flat = lambda x: x.reshape(R)  # noqa: E731  slot p of sequence n is range p·N + n
    f32 = torch.float32 if h0 is None else h0.dtype
    # 1. start states: the warm-ups, the transitions, the forward chain, then every chunk's Ŝ. Slot q's M
    # sits at row (q + 1)·N + n: the forward chain reads rows [0, R) (slot p − 1's at p·N + n), the
    # reverse chain rows [N, R + N) (slot p's at p·N + n); no copies between them
    start_state = empty(R, HV, K, V, dt=f32)
    summary(False, flat(slots.window_start), flat(start), start_state, kept_range(R, device))
    first = torch.arange(P, device=device)[:, None] == 0
    needed = ~first & ~shortcut  # M_p of the reverse chain
    chained = torch.cat([exact[1:] == 1, torch.zeros_like(needed[:1])])  # slot q's M for the forward chain
    transition = empty(R + N, HV, K, K, dt=f32)
    summary(True, flat(torch.where(needed | chained, start, end)), flat(end), transition,
            kept_range(R + N, device)[N:])
    chain(states=start_state, transition=transition[:R], exact=exact,
          initial_state=kept_zeros((N, HV, K, V), f32, device) if h0 is None else h0)
    states(start_state, flat(start), flat(end), flat(chunk_row))
    # 2. local state gradients of slots 1 .. P − 1 (slot 0's ranges made empty: its e is never read)
    local = empty(R, HV, K, V, dt=f32)
    local_gradient(flat(start), flat(torch.where(first, start, end)), kept_range(R, device), local)
    # 3. the reverse chain
    gradient = empty(P, N, HV, K, V, dt=f32)
    gradient[P - 1] = 0 if dht is None else dht
    transition_of = transition[N:].view(P, N, HV, K, K)
    local = local.view(P, N, HV, K, V)
    for p in range(P - 2, -1, -1):
        carried = torch.matmul(transition_of[p + 1].transpose(-1, -2), gradient[p + 1])
        torch.add(local[p + 1], torch.where(needed[p + 1][:, None, None, None], carried, 0.0), out=gradient[p])
    # 4. every token's gradients; dh0 from slot 0
    dh0 = empty(N, HV, K, V, dt=f32) if want_dh0 else kept_zeros((1, HV, K, V), f32, device)
    nowhere = kept_nowhere(R, device)
    dh0_row = torch.cat([kept_range(N, device), nowhere[N:]]) if want_dh0 else nowhere
    backward(flat(start), flat(end), flat(chunk_row), start_state, gradient.view(R, HV, K, V), dh0_row, dh0)
    return dh0 if want_dh0 else None
