"""Intra-card context parallelism for the backward (gdn-math.md §5): every sequence cut into slots
of segment_len tokens whose backward runs side by side, each from its exact start state and the
exact gradient of the state at its end. The float64 math and its tests: gdnc.reference.segments
(segmented_gradients); this module drives the kernels (or, in tests, references of them) through it.

    1. summaries: every slot's end state from zero, S_ext, and its K×K transition M (the forward
       with v = 0 from S = I: the state map is linear in S), slot p of sequence n at row (p + 1)·N + n
    2. start states: S_start(0) = h0, S_start(p) = M_{p−1} S_start(p−1) + S_ext(p−1) (the forward's
       chain, every step exact), then every slot's chunk-start states Ŝ from its S_start
    3. local state gradients: e_p, the gradient of the state at slot p's start from a zero gradient
       at its end (the chain of dS alone over the slot: 6 of the backward's 21 GEMMs a chunk)
    4. the reverse chain, in fp32: D_last = dht, D_p = e_{p+1} + M_{p+1}ᵀ D_{p+1}, D_p being the
       gradient of the state at slot p's end; a slot past its sequence's end is empty, with e = 0
       and M = I, so dht passes through it to the last slot with tokens
    5. the backward over every slot from D_p and S_start(p): every token's gradients once, and
       dh0 from slot 0

Slot boundaries are multiples of the chunk from their sequence's start, so the chunking, and what
gdn_prepare computed per chunk, is the unsplit call's. Every step runs on the device with shapes
the host knows (no sync: a backward can be captured in a CUDA graph).
"""
from __future__ import annotations

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.runtime.buffers import kept_range, kept_rows, kept_zeros


def backward_slots(cu: torch.Tensor, segment_len: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) [P, N] int32: slot p of sequence n covers [cu_n + p·L, cu_n + (p + 1)·L) clipped to
    the sequence (empty past its end), for the offsets ``cu`` [N + 1] and P = ``slots``, L = ``segment_len``."""
    cu = cu.long()
    steps = kept_rows(("slot steps", cu.device, segment_len), slots,
                      lambda r: torch.arange(0, r * segment_len, segment_len, device=cu.device))
    start = torch.minimum(cu[:-1] + steps[:, None], cu[1:])
    end = torch.minimum(start + segment_len, cu[1:])
    return start.int(), end.int()


def chunk_rows(cu: torch.Tensor, sequence_rows: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[P, N] int32: the row of each slot's first chunk state Ŝ in a states buffer whose sequence n
    starts at ``sequence_rows[n]`` (backward.state_slots), for slots starting at ``start`` [P, N]."""
    return (sequence_rows[:-1] + torch.div(start - cu[:-1], CHUNK_SIZE, rounding_mode="floor")).int()


def split_backward(summary, states, local_gradient, backward, chain, start, end, chunk_row, h0, dht, shape, empty,
                   want_dh0: bool) -> torch.Tensor | None:
    """The backward of the packed call over the slots [start, end) ([P, N] int32; backward_slots),
    each slot's chunk-start states at ``chunk_row`` [P, N] (chunk_rows). Returns dh0 [N, HV, K, V]
    fp32 (None unless ``want_dh0``); the token gradients are written by ``backward``.

    shape: (HV, K, V) (K = V: the transitions are measured with a K-wide state pass); h0, dht:
    [N, HV, K, V] fp32 or None (zero); ``empty(*shape, dt=)`` makes buffers (buffers.output_allocator).
    The passes, each over token ranges [start_r, end_r) (int32 [R]):
      summary(transitions, start, end, out, out_row): the forward over range r (gdn_forward), its end
          state to out[out_row[r]]: from zero with the call's values, or (``transitions``) from S = I
          with v = 0, which ends in the range's transition M
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
    P, N = start.shape
    R, device = P * N, start.device
    flat = lambda x: x.reshape(R)  # noqa: E731  slot p of sequence n is range p·N + n
    f32 = torch.float32
    # 1. summaries, slot p at row (p + 1)·N + n: the forward chain reads rows [0, R) (slot p − 1's at
    # p·N + n), the reverse chain rows [N, R + N) (slot p's at p·N + n); no copies between them
    shifted = kept_range(R + N, device)[N:]
    ends = empty(R + N, HV, K, V, dt=f32)
    summary(False, flat(start), flat(end), ends, shifted)
    transition = empty(R + N, HV, K, K, dt=f32)
    summary(True, flat(start), flat(end), transition, shifted)
    # 2. start states, in place over the end states of the slots before them (rows [0, N) take h0)
    start_state = ends[:R]
    ones = kept_rows(("ones", device), R, lambda r: torch.ones(r, dtype=torch.int32, device=device)).view(P, N)
    chain(states=start_state, transition=transition[:R], exact=ones,
          initial_state=kept_zeros((N, HV, K, V), f32, device) if h0 is None else h0)
    states(start_state, flat(start), flat(end), flat(chunk_row))
    # 3. local state gradients of slots 1 .. P − 1 (slot 0's ranges made empty: its e is never read)
    local = empty(R, HV, K, V, dt=f32)
    first = torch.arange(P, device=device)[:, None] == 0
    local_gradient(flat(start), flat(torch.where(first, start, end)), kept_range(R, device), local)
    # 4. the reverse chain
    gradient = empty(P, N, HV, K, V, dt=f32)
    gradient[P - 1] = 0 if dht is None else dht
    transition_of = transition[N:].view(P, N, HV, K, K)
    local = local.view(P, N, HV, K, V)
    for p in range(P - 2, -1, -1):
        torch.matmul(transition_of[p + 1].transpose(-1, -2), gradient[p + 1], out=gradient[p])
        gradient[p] += local[p + 1]
    # 5. every token's gradients; dh0 from slot 0
    dh0 = empty(N, HV, K, V, dt=f32) if want_dh0 else kept_zeros((1, HV, K, V), f32, device)
    nowhere = kept_rows(("nowhere", device), R, lambda r: torch.full((r,), -1, dtype=torch.int32, device=device))
    dh0_row = torch.cat([kept_range(N, device), nowhere[N:]]) if want_dh0 else nowhere
    backward(flat(start), flat(end), flat(chunk_row), start_state, gradient.view(R, HV, K, V), dh0_row, dh0)
    return dh0 if want_dh0 else None
