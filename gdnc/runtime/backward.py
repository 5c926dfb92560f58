"""The backward on gdnc's kernels for a checked call: the states pass (gdn_forward built with
store_states: every chunk's start state Ŝ in bf16), then gdn_backward over every range's chunks in
reverse — one range a sequence, or, where the plan splits the backward, the slots of
gdnc.runtime.cp_backward (chained exactly, or within the gate shortcut's bound). dq and dk, written
per value head in the operand dtype, are summed over each group of value heads in a fixed order
(fp32 accumulation), so gradients are bitwise repeatable; without GVA the kernel writes them in
place.

What the forward keeps for it (gdnc.runtime.forward.Saved) is what FlashQLA keeps — q, k, v, β, the
cumulative log2 gate, the gate-free inverse A and h0 — and gdn_prepare's contraction flag, which the
backward split plans with. Per token and value head, in bf16 with G = HV / H: 4·K/G bytes of q and
k, 2·V of v, 2·C of A, 12 of β, the gate and the flag — 512/G + 396 at K = V = 128 (the flag's 4
bytes are 1 % more than FlashQLA keeps); with use_qk_l2norm_in_kernel, 5 bytes more a q/k row
(gdnc.runtime.l2norm: an fp32 norm and a flag; the normalised rows are the q and k saved here).
The chunk states are recomputed and live only during the backward (2·K·V bytes a chunk and value
head). Everything runs on the device with shapes the host knows: a backward can be captured in a
CUDA graph.
"""
from __future__ import annotations

import dataclasses

import torch

from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.problem import Shapes
from gdnc.runtime.buffers import kept_identity, kept_range, kept_zeros
from gdnc.runtime.cp import run_planner
from gdnc.runtime.cp_backward import chunk_rows, reverse_shortcuts, split_backward
from gdnc.runtime.forward import Saved, final_rows, ranges_forward
from gdnc.runtime.plan import Split


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
                 want_dh0: bool, split: Split | None = None) -> Gradients:
    """The gradients of a checked call ``s`` from the output gradients ``do`` [B, T, HV, V] and ``dht``
    [N, HV, K, V] (None: zero) on ``kernels`` {"states": gdn_forward with store_states, "backward":
    gdn_backward, and with a ``split`` "forward": gdn_forward, "state_gradient": gdn_backward built
    state_gradient_only, "plan": cp_plan, "chain": cp_chain}, loaded;
    ``empty(*shape, dt=)`` makes the buffers. Unsplit, one range a sequence; split, the slots of
    gdnc.runtime.cp_backward."""
    device, dtype = saved.q.device, saved.q.dtype
    tokens, N, group = s.B * s.T, s.num_sequences, s.HV // s.H
    cu = saved.cu_seqlens
    sequence_rows = state_slots(cu)
    states = empty(tokens // CHUNK_SIZE + N, s.HV, s.K, s.V, dt=dtype)
    scratch = empty(tokens, s.HV, s.V, dt=dtype)  # the forward passes' o, never read
    unread = kept_zeros((1, s.HV, s.K, s.V), torch.float32, device)  # binds a state argument nothing reads
    # dq and dk per value head in the operand dtype; without GVA they are the gradients themselves
    grads = dict(dq_head=empty(tokens, s.HV, s.K, dt=dtype), dk_head=empty(tokens, s.HV, s.K, dt=dtype),
                 dv=empty(tokens, s.HV, s.V, dt=dtype), dbeta=empty(tokens, s.HV, dt=torch.float32),
                 dg=empty(tokens, s.HV, dt=torch.float32))
    do = do.reshape(tokens, s.HV, s.V).to(dtype).contiguous()
    dht = None if dht is None else dht.float().contiguous()
    states_pass = ranges_forward(kernels["states"], saved, s.scale)

    def backward(start, end, chunk_row, h0, dht_, dh0_row, dh0, end_offset=0):
        kernels["backward"](
            q=saved.q, k=saved.k, v=saved.v, l2_gate=saved.l2_gate, beta=saved.beta, a_free=saved.a_free,
            states=states, seq_start=start, seq_end=end, end_offset=end_offset, state_slot=chunk_row, do=do,
            has_h0=int(h0 is not None), initial_state=unread if h0 is None else h0, has_dht=int(dht_ is not None),
            dht=unread if dht_ is None else dht_, scale=s.scale, dh0_row=dh0_row, dh0=dh0, **grads)

    if split is None:
        # one range a sequence, [cu[n], cu[n + 1]), read from cu itself
        states_pass(saved.v, saved.h0, cu, cu, scratch, unread, final_rows(N, False, device), end_offset=1,
                    states=states, state_slot=sequence_rows[:N])
        dh0 = empty(N, s.HV, s.K, s.V, dt=torch.float32) if want_dh0 else unread
        backward(cu, cu, sequence_rows[:N], saved.h0, dht, final_rows(N, want_dh0, device), dh0, end_offset=1)
        dh0 = dh0 if want_dh0 else None
    else:
        slots = run_planner(kernels["plan"], cu, saved.l2_gate, saved.contracts, split)
        shortcut = reverse_shortcuts(cu, saved.l2_gate, saved.contracts, slots.start, slots.end,
                                     split.window_limits()[1])
        forward = ranges_forward(kernels["forward"], saved, s.scale)
        zeros = kept_zeros((tokens, s.HV, s.K), dtype, device)
        identity = kept_identity((slots.start.numel(), s.HV, s.K, s.K), torch.float32, device)

        def summary(transitions, start_, end_, out, out_row):
            if transitions:
                forward(zeros, identity, start_, end_, scratch, out, out_row)
            else:
                forward(saved.v, None, start_, end_, scratch, out, out_row)

        def states_of(h0, start_, end_, chunk_row):
            states_pass(saved.v, h0, start_, end_, scratch, unread, final_rows(start_.numel(), False, device),
                        states=states, state_slot=chunk_row)

        def local_gradient(start_, end_, out_row, out):
            kernels["state_gradient"](q=saved.q, k=saved.k, l2_gate=saved.l2_gate, beta=saved.beta,
                                      a_free=saved.a_free, seq_start=start_, seq_end=end_, end_offset=0, do=do,
                                      has_dht=0, dht=unread, scale=s.scale, dh0_row=out_row, dh0=out)

        dh0 = split_backward(summary, states_of, local_gradient, backward, kernels["chain"], slots, shortcut,
                             chunk_rows(cu, sequence_rows, slots.start), saved.h0, dht, (s.HV, s.K, s.V), empty,
                             want_dh0)
    # the sum over the value heads of each q/k head (fp32 accumulation), in their order: no atomics, the
    # same bits every run
    dq, dk = (grads[name].view(s.B, s.T, s.H, group, s.K).sum(3) if group > 1 else
              grads[name].view(s.B, s.T, s.H, s.K) for name in ("dq_head", "dk_head"))
    return Gradients(dq=dq, dk=dk, dv=grads["dv"].view(s.B, s.T, s.HV, s.V), dg=grads["dg"].view(s.B, s.T, s.HV),
                     dbeta=grads["dbeta"].view(s.B, s.T, s.HV), dh0=dh0)
