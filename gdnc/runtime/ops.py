"""gdnc.chunk_gated_delta_rule: FLA's GDN op on gdnc's generated Hopper kernels.

The forward runs two generated kernels: gdn_prepare (per chunk, the gate-free inverse and the
cumulative log2 gate), then the fused, warp-specialised forward over chunks (gdnc.runtime.forward),
with the configs a policy chooses (gdnc.runtime.policy). What the kernels do not cover falls back to
the chunked reference, saying why once (a FallbackWarning per reason and call site): no CUDA
tensors (or not a Hopper GPU), dtypes other than bf16 and fp16, head sizes other than K = V = 128
(the only ones run on the GPU yet).

A call that needs gradients (any of q, k, v, g, beta, initial_state requiring them) runs the same
forward through an autograd function whose backward is gdnc's generated backward
(gdnc.runtime.backward); double backward is refused.

Everything after the argument check runs on the device with shapes the host knows, so a call can
be captured in a CUDA graph. Outside capture, the check reads cu_seqlens and the largest g on the
host (a device sync) to check them; during capture it does not, and they are not checked. A warm
process (kernels in the cache) loads them without importing sympy or jinja2.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable

import torch

from gdnc.emit.cache import library_signature
from gdnc.emit.config import Heads
from gdnc.reference.problem import Shapes, check_arguments
from gdnc.runtime.buffers import output_allocator
from gdnc.runtime.backward import run_backward
from gdnc.runtime.forward import Saved, run_forward
from gdnc.runtime.kernels import loaded
from gdnc.runtime.l2norm import l2_normalize
from gdnc.runtime.plan import Plan
from gdnc.runtime.policy import DEFAULT_POLICY, Call, Policy

RECURRENCE = "gdn"  # the built-in recurrence this op computes (gdnc.ir.library)
# the q/k/v dtypes the op runs the kernels for (both run on the GPU: tests/test_gpu_forward.py)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
KERNEL_HEAD_DIMS = (128, 128)  # (K, V): the only head size run on the GPU yet


class FallbackWarning(UserWarning):
    """The op ran the chunked reference instead of the kernels; the message says why."""


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None, *, policy: Policy | None = None):
    """Gated DeltaNet, chunked, with FLA's signature and conventions.

    q, k: [B, T, H, K] (bf16 or fp16 run the kernels); v: [B, T, HV, V] (HV a multiple of H); g: [B, T, HV]
    log-space decay, <= 0 (fp32); beta: [B, T, HV]; initial_state: [N, HV, K, V] fp32; cu_seqlens: [N + 1]
    int with B = 1 for packed sequences. policy: who chooses the kernels' configs (default: the hand
    heuristic, gdnc.runtime.policy.DEFAULT_POLICY). Returns o [B, T, HV, V] in v's dtype and the final
    state [N, HV, K, V] fp32 (None unless output_final_state).
    """
    shapes = check_arguments(library_signature(RECURRENCE), q, k, v, scale=scale, initial_state=initial_state,
                             cu_seqlens=cu_seqlens, inputs={"g": g, "beta": beta})
    if use_qk_l2norm_in_kernel:
        # normalised in fp32 before the kernels (not yet fused into them); the backward keeps the
        # normalised rows (saved for the kernels anyway) and a norm a row, as FlashQLA does
        q, k = l2_normalize(q), l2_normalize(k)
    reason = _unsupported(q, k, v, shapes)
    if reason is not None:
        return _fallback(reason, q, k, v, g, beta, shapes, initial_state, output_final_state, cu_seqlens)
    plan, kernels = _plan(q, shapes, policy)
    empty = output_allocator(q.device, os.environ.get("GDNC_POISON_OUTPUTS") == "1")
    run = _Run(shapes, output_final_state, cu_seqlens, plan, kernels, empty)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, beta, initial_state)):
        heads = _heads(q, shapes)
        run.backward_kernels = {role: loaded(RECURRENCE, name, heads, config)
                                for role, (name, config) in plan.backward_kernels().items()}
        return _GatedDeltaRule.apply(q, k, v, g, beta, initial_state, run)
    o, final_state, _ = run.forward(q, k, v, g, beta, initial_state)
    return o, final_state


@dataclasses.dataclass
class _Run:
    """A checked call's plan, its loaded kernels and its output allocator."""

    shapes: Shapes
    output_final_state: bool
    cu_seqlens: torch.Tensor | None
    plan: Plan
    kernels: dict            # plan.kernels(), loaded
    empty: Callable          # empty(*shape, dt=): the buffers the kernels write
    backward_kernels: dict | None = None  # plan.backward_kernels() by role, loaded (calls that need gradients)

    def forward(self, q, k, v, g, beta, initial_state):
        return run_forward(q, k, v, g, beta, self.shapes, initial_state, self.output_final_state, self.cu_seqlens,
                           self.plan, self.kernels, self.empty)


class _GatedDeltaRule(torch.autograd.Function):
    """The op on the kernels with gradients in q, k, v, g, beta and initial_state (gdnc.runtime.backward)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, run: _Run):
        o, final_state, saved = run.forward(q, k, v, g, beta, initial_state)
        ctx.save_for_backward(*saved.tensors())
        ctx.run = run
        ctx.dtypes = (g.dtype, beta.dtype)
        return o, final_state

    @staticmethod
    def backward(ctx, do, dht):
        if torch.is_grad_enabled():
            raise RuntimeError("gdnc.chunk_gated_delta_rule: double backward (create_graph=True, or a gradient of its "
                               "gradients) is not supported; its backward runs kernels that autograd cannot differentiate")
        run = ctx.run
        saved = Saved(*ctx.saved_tensors)
        want_dh0 = saved.h0 is not None and ctx.needs_input_grad[5]
        grads = run_backward(saved, do, dht if run.output_final_state else None, run.shapes, run.backward_kernels,
                             run.empty, want_dh0, run.plan.backward_split)
        g_dtype, beta_dtype = ctx.dtypes
        return (grads.dq, grads.dk, grads.dv, grads.dg.to(g_dtype), grads.dbeta.to(beta_dtype), grads.dh0, None)


def kernel_call(q, k, v, g, beta, initial_state=None, output_final_state=False, cu_seqlens=None, *,
                policy: Policy | None = None):
    """(plan, run) for a call the kernels take (else ValueError with the reason): the plan the op runs
    for it, and a function of no arguments that runs it — its kernels only, the checks done here once
    (the benchmarks time and profile ``run``)."""
    shapes = check_arguments(library_signature(RECURRENCE), q, k, v, scale=None, initial_state=initial_state,
                             cu_seqlens=cu_seqlens, inputs={"g": g, "beta": beta})
    reason = _unsupported(q, k, v, shapes)
    if reason is not None:
        raise ValueError(f"gdnc's kernels cannot run this call: {reason}")
    plan, kernels = _plan(q, shapes, policy)
    empty = output_allocator(q.device, poison=False)
    return plan, lambda: run_forward(q, k, v, g, beta, shapes, initial_state, output_final_state, cu_seqlens, plan,
                                     kernels, empty)[:2]


def _heads(q, shapes: Shapes) -> Heads:
    return Heads(shapes.H, shapes.HV, shapes.K, shapes.V, "bfloat16" if q.dtype == torch.bfloat16 else "float16")


def _plan(q, shapes: Shapes, policy: Policy | None):
    """The plan of a checked call and its forward's kernels, loaded before any launch."""
    heads = _heads(q, shapes)
    plan = (policy or DEFAULT_POLICY).plan(Call(heads, shapes.B * shapes.T, shapes.num_sequences, _sm_count(q.device)))
    return plan, {name: loaded(RECURRENCE, name, heads, config) for name, config in plan.kernels().items()}


def _unsupported(q, k, v, s: Shapes) -> str | None:
    """Why the kernels cannot run this call, or None."""
    if not q.is_cuda:
        return "no CUDA tensors"
    major, minor = torch.cuda.get_device_capability(q.device)
    if (major, minor) != (9, 0):
        return f"the kernels are built for Hopper (sm_90a), this GPU is sm_{major}{minor}"
    if not (q.dtype == k.dtype == v.dtype and q.dtype in KERNEL_DTYPES):
        names = " or ".join(str(d).removeprefix("torch.") for d in KERNEL_DTYPES)
        return f"the kernels are checked for q, k, v all {names}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if (s.K, s.V) != KERNEL_HEAD_DIMS:
        return f"the kernels are built and checked for K = V = 128, got K={s.K}, V={s.V}"
    return None


def _fallback(reason, q, k, v, g, beta, shapes: Shapes, initial_state, output_final_state, cu_seqlens):
    """The chunked reference in fp32, after saying why (refused during CUDA-graph capture)."""
    if q.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"gdnc: this call cannot be captured in a CUDA graph: {reason}, and the reference "
                           "it would fall back to runs on the host")
    warnings.warn(f"gdnc: {reason}; using the chunked reference", FallbackWarning, stacklevel=3)
    from gdnc.ir.library import get_variant
    from gdnc.reference.chunked_form import chunked

    o, ht = chunked(get_variant(RECURRENCE), q, k, v, g=g, beta=beta, scale=shapes.scale, initial_state=initial_state,
                    output_final_state=output_final_state, cu_seqlens=cu_seqlens, dtype=torch.float32)
    return o.to(v.dtype), (ht.float() if ht is not None else None)


@functools.lru_cache(maxsize=None)
def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count
