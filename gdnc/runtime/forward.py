"""The forward on gdnc's kernels for a checked call and its plan: gdn_prepare, then gdn_forward over
every sequence, or — where the plan splits — the context-parallel passes of gdnc.runtime.cp.

A call launches gdn_prepare and gdn_forward, and nothing else on the device unless the inputs need
converting (int32 offsets, fp32 g and beta, contiguous tensors); a split call four launches more.
Everything runs with shapes the host knows, so a call can be captured in a CUDA graph.
"""
from __future__ import annotations

import dataclasses

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.problem import Shapes
from gdnc.runtime.buffers import kept_nowhere, kept_range, kept_rows, kept_zeros
from gdnc.runtime.cp import run_planner, split_forward
from gdnc.runtime.plan import Plan


@dataclasses.dataclass
class Saved:
    """A forward's tensors the backward reads, packed to B·T rows: q, k [tokens, H, K], v [tokens, HV, V]
    (the op's dtype), beta, l2_gate and contracts [tokens, HV] fp32 (gdn_prepare's: the backward split
    plans with them as the forward's does), a_free [tokens, HV, C], h0 [N, HV, K, V] fp32 or None,
    cu_seqlens [N + 1] int32."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    l2_gate: torch.Tensor
    contracts: torch.Tensor
    a_free: torch.Tensor
    h0: torch.Tensor | None
    cu_seqlens: torch.Tensor

    def tensors(self) -> tuple:
        """The fields in order (what autograd's save_for_backward keeps; Saved(*tensors) restores them)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def final_rows(count: int, wanted: bool, device) -> torch.Tensor:
    """gdn_forward's final_row for ``count`` packed sequences: each to its own row, or (not ``wanted``)
    nowhere, so that the kernel does not store final states nobody reads."""
    if wanted:
        return kept_range(count, device)
    return kept_nowhere(count, device)


def ranges_forward(kernel, saved: Saved, scale: float):
    """``forward(v, h0, start, end, o, final, final_row, end_offset=0, **states)``: ``kernel`` (a gdn_forward
    build) over the token ranges [start_r, end_{r + end_offset}) of the call ``saved`` holds, with values
    ``v`` [tokens, HV, V], from h0 [ranges, HV, K, V] (None: from zero), o written, range r's end state
    to final[final_row[r]] where final_row[r] >= 0 (cp.split_forward's contract); a store_states build
    also takes states= and state_slot=."""
    HV, K, V = saved.v.shape[1], saved.k.shape[2], saved.v.shape[2]
    unread = kept_zeros((1, HV, K, V), torch.float32, saved.q.device)  # binds initial_state where none is read

    def forward(v, h0, start, end, o, final, final_row, end_offset=0, **states):
        kernel(q=saved.q, k=saved.k, v=v, l2_gate=saved.l2_gate, beta=saved.beta, a_free=saved.a_free,
               seq_start=start, seq_end=end, end_offset=end_offset, zero_start=int(h0 is None),
               initial_state=unread if h0 is None else h0, scale=scale, o=o, final_row=final_row, final_state=final,
               **states)

    return forward


def dense_offsets(batch: int, length: int, device) -> torch.Tensor:
    """cu_seqlens [batch + 1] int32 of ``batch`` sequences of ``length`` tokens (a dense call), from a
    kept buffer: a fresh one would cost a launch every call."""
    make = lambda rows: torch.arange(rows, dtype=torch.int32, device=device) * length  # noqa: E731
    return kept_rows(("dense offsets", device, length), batch + 1, make)


def prepare(kernel, k, g, beta, s: Shapes, cu_seqlens, empty) -> dict[str, torch.Tensor]:
    """Run gdn_prepare on a checked call ``s`` (k, g, beta packed to B·T rows, ``cu_seqlens`` int32
    offsets); its arguments by name, the outputs a_free [B·T, HV, C], l2_gate and contracts
    [B·T, HV] fp32 among them, in buffers from ``empty``."""
    tokens = s.B * s.T
    args = dict(k=k.reshape(tokens, s.H, s.K).contiguous(), g=g.reshape(tokens, s.HV).float().contiguous(),
                beta=beta.reshape(tokens, s.HV).float().contiguous(), cu_seqlens=cu_seqlens,
                a_free=empty(tokens, s.HV, CHUNK_SIZE, dt=k.dtype), l2_gate=empty(tokens, s.HV, dt=torch.float32),
                contracts=empty(tokens, s.HV, dt=torch.float32))
    kernel(**args)
    return args


def run_forward(q, k, v, g, beta, s: Shapes, initial_state, output_final_state: bool, cu_seqlens, plan: Plan,
                kernels: dict, empty):
    """o [B, T, HV, V], the final state [N, HV, K, V] (None unless ``output_final_state``) and what the
    backward reads (Saved) of a checked call ``s`` on the kernels of ``plan``:
    ``kernels`` holds each of plan.kernels() loaded (gdnc.runtime.kernels; all before the first
    launch, which a captured call needs), ``empty(*shape, dt=)`` makes the output buffers."""
    device, dtype = q.device, q.dtype
    tokens, N = s.B * s.T, s.num_sequences
    cu = dense_offsets(s.B, s.T, device) if cu_seqlens is None else cu_seqlens.to(torch.int32)
    prep = prepare(kernels["gdn_prepare"], k, g, beta, s, cu, empty)
    q_packed = q.reshape(tokens, s.H, s.K).contiguous()
    v_packed = v.reshape(tokens, s.HV, s.V).contiguous()
    o = empty(tokens, s.HV, s.V, dt=dtype)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    saved = Saved(q=q_packed, k=prep["k"], v=v_packed, beta=prep["beta"], l2_gate=prep["l2_gate"],
                  contracts=prep["contracts"], a_free=prep["a_free"], h0=h0, cu_seqlens=cu)
    forward = ranges_forward(kernels["gdn_forward"], saved, s.scale)
    if plan.split is not None:
        # after gdn_prepare, five launches and no host sync: cp_plan, the three forward passes, cp_chain
        slots = run_planner(kernels["cp_plan"], cu, prep["l2_gate"], prep["contracts"], plan.split)
        final_state = split_forward(forward, kernels["cp_chain"], v_packed, h0, slots, o, empty)
    else:
        # packed sequences: range n is [cu[n], cu[n + 1]), read from cu itself (no copies, no launches)
        final_state = empty(N, s.HV, s.K, s.V, dt=torch.float32)
        forward(v_packed, h0, cu, cu, o, final_state, final_rows(N, output_final_state, device), end_offset=1)
    return o.reshape(s.B, s.T, s.HV, s.V), (final_state if output_final_state else None), saved
