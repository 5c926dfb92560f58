"""The backward on gdnc's kernels for a checked call: the states pass (gdn_forward built with
store_states: every chunk's start state Ŝ in bf16, one range per sequence), then gdn_backward over
every sequence's chunks in reverse; dq and dk, written per value head, are summed over each group
of value heads in a fixed order, so gradients are bitwise repeatable.

What the forward keeps for it (gdnc.runtime.forward.Saved) is what FlashQLA keeps: q, k, v, β, the
cumulative log2 gate, the gate-free inverse A and h0. Per token and value head, in bf16 with
G = HV / H: 4·K/G bytes of q and k, 2·V of v, 2·C of A, 8 of β and the gate — 512/G + 392 at
K = V = 128; with use_qk_l2norm_in_kernel, 5 bytes more a q/k row (gdnc.runtime.l2norm: an fp32
norm and a flag; the normalised rows are the q and k saved here). The chunk states are recomputed
and live only during the backward (2·K·V bytes a chunk and value head). Everything runs on the
device with shapes the host knows: a backward can be captured in a CUDA graph.
"""
from __future__ import annotations

import dataclasses

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.problem import Shapes
from gdnc.runtime.buffers import kept_range, kept_zeros
from gdnc.runtime.forward import Saved, final_rows


@dataclasses.dataclass
class Gradients:
    """The backward's results in the op's layouts: dq, dk [B, T, H, K] and dv [B, T, HV, V] in the operand
    dtype; dg, dbeta [B, T, HV] fp32; dh0 [N, HV, K, V] fp32 (None when not asked for)."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dg: torch.Tensor
    dbeta: torch.Tensor
    dh0: torch.Tensor | None


def state_slots(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Row of each sequence's first chunk state in the states buffer [N + 1] int32: gdn_prepare's slot
    layout, cu[n] // C + n, so T // C + N rows hold every chunk of any T tokens in N sequences."""
    count = cu_seqlens.shape[0]
    return torch.div(cu_seqlens, CHUNK_SIZE, rounding_mode="floor").add_(kept_range(count, cu_seqlens.device)).int()


def run_backward(saved: Saved, do: torch.Tensor, dht: torch.Tensor | None, s: Shapes, kernels: dict, empty,
                 want_dh0: bool) -> Gradients:
    """The gradients of a checked call ``s`` from the output gradients ``do`` [B, T, HV, V] and ``dht``
    [N, HV, K, V] (None: zero) on ``kernels`` {"states": gdn_forward with store_states, "backward":
    gdn_backward}, loaded; ``empty(*shape, dt=)`` makes the buffers."""
    device, dtype = saved.q.device, saved.q.dtype
    tokens, N = s.B * s.T, s.num_sequences
    cu = saved.cu_seqlens
    slots = state_slots(cu)
    states = empty(tokens // CHUNK_SIZE + N, s.HV, s.K, s.V, dt=dtype)
    unread = kept_zeros((1, s.HV, s.K, s.V), torch.float32, device)  # binds a state argument nothing reads
    kernels["states"](
        q=saved.q, k=saved.k, v=saved.v, l2_gate=saved.l2_gate, beta=saved.beta, a_free=saved.a_free, seq_start=cu,
        seq_end=cu, end_offset=1, zero_start=int(saved.h0 is None),
        initial_state=unread if saved.h0 is None else saved.h0, scale=s.scale,
        o=empty(tokens, s.HV, s.V, dt=dtype), final_row=final_rows(N, False, device), final_state=unread,
        states=states, state_slot=slots[:N])
    grads = dict(dq_head=empty(tokens, s.HV, s.K, dt=torch.float32), dk_head=empty(tokens, s.HV, s.K, dt=torch.float32),
                 dv=empty(tokens, s.HV, s.V, dt=dtype), dbeta=empty(tokens, s.HV, dt=torch.float32),
                 dg=empty(tokens, s.HV, dt=torch.float32), dh0=empty(N, s.HV, s.K, s.V, dt=torch.float32)
                 if want_dh0 else unread)
    kernels["backward"](
        q=saved.q, k=saved.k, v=saved.v, l2_gate=saved.l2_gate, beta=saved.beta, a_free=saved.a_free, states=states,
        state_slot=slots, cu_seqlens=cu, do=do.reshape(tokens, s.HV, s.V).to(dtype).contiguous(),
        has_h0=int(saved.h0 is not None), initial_state=unread if saved.h0 is None else saved.h0,
        has_dht=int(dht is not None), dht=unread if dht is None else dht.float().contiguous(), scale=s.scale,
        write_dh0=int(want_dh0), **grads)
    group = s.HV // s.H

    def per_qk_head(x):
        # sum over the value heads of each q/k head, in their order: no atomics, the same bits every run
        return x.view(tokens, s.H, group, s.K).sum(2).to(dtype).view(s.B, s.T, s.H, s.K)

    return Gradients(dq=per_qk_head(grads["dq_head"]), dk=per_qk_head(grads["dk_head"]),
                     dv=grads["dv"].view(s.B, s.T, s.HV, s.V), dg=grads["dg"].view(s.B, s.T, s.HV),
                     dbeta=grads["dbeta"].view(s.B, s.T, s.HV), dh0=grads["dh0"] if want_dh0 else None)
