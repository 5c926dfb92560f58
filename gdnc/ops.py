"""gdnc.chunk_gated_delta_rule: FLA's GDN op on gdnc's generated Hopper kernels.

The forward runs two generated kernels: gdn_prepare (per chunk, the gate-free inverse and the
cumulative log2 gate), then the fused, warp-specialised forward over chunks. What the kernels do
not cover falls back to the chunked reference, saying why once: no CUDA tensors (or not a Hopper
GPU), dtypes other than bf16 and fp16, head sizes other than K = V = 128 (the only ones checked on
the GPU yet), and — until gdnc generates the backward — calls that need gradients.

A call launches gdn_prepare and gdn_forward, and nothing else on the device unless the inputs need
converting (int32 offsets, fp32 g and beta, contiguous tensors). Long sequences that leave SMs idle
are split into segments that run in parallel (gdnc.cp; the plan in gdnc.plan): four launches more.
Everything after the argument check runs on the device with shapes the host knows, so a call can
be captured in a CUDA graph. Outside capture, the check reads cu_seqlens on the host once (a device
sync) to check its offsets; during capture it does not, and the offsets are not checked.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from gdnc.cp import kept_range, kept_rows, kept_zeros, run_planner, split_forward
from gdnc.emit.build import compile_all
from gdnc.emit.config import FORWARD_WIDTHS, ForwardConfig, Heads, PrepareConfig
from gdnc.emit.render import render
from gdnc.ir.library import get_variant
from gdnc.plan import ForwardPlan, SplitConfig, plan_forward, prepare_heads_per_cta
from gdnc.reference.chunked import chunked
from gdnc.reference.problem import check_arguments

CHUNK = 64
_warned: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"gdnc: {message}", stacklevel=3)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """Gated DeltaNet, chunked, with FLA's signature and conventions.

    q, k: [B, T, H, K] (bf16 or fp16 run the kernels); v: [B, T, HV, V] (HV a multiple of H); g: [B, T, HV] log-space
    decay (fp32); beta: [B, T, HV]; initial_state: [N, HV, K, V] fp32; cu_seqlens: [N + 1] int
    with B = 1 for packed sequences. Returns o [B, T, HV, V] in v's dtype and the final state
    [N, HV, K, V] fp32 (None unless output_final_state).
    """
    rec = get_variant("gdn")
    shapes = check_arguments(rec, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                             inputs={"g": g, "beta": beta})
    if use_qk_l2norm_in_kernel:
        # normalised in fp32 before the kernels (not yet fused into them)
        q = F.normalize(q.float(), dim=-1).to(q.dtype)
        k = F.normalize(k.float(), dim=-1).to(k.dtype)
    reason = _unsupported(q, k, v, shapes)
    if reason is None and torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, g, beta, initial_state)):
        reason = "gradients requested: gdnc does not generate the backward yet, so this call runs the " \
                 "chunked reference with autograd (slow)"
    if reason is not None:
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"gdnc: this call cannot be captured in a CUDA graph: {reason}, and the reference "
                               "it would fall back to runs on the host")
        _say_once(reason, f"{reason}; using the chunked reference")
        o, ht = chunked(rec, q, k, v, g=g, beta=beta, scale=shapes.scale, initial_state=initial_state,
                        output_final_state=output_final_state, cu_seqlens=cu_seqlens, dtype=torch.float32)
        return o.to(v.dtype), (ht.float() if ht is not None else None)
    return run_kernels(q, k, v, g, beta, shapes, initial_state, output_final_state, cu_seqlens)


# the q/k/v dtypes the op runs the kernels for (fp16: tests/test_gpu_forward.py::test_float16,
# passed on the H200 on 2026-12-04, benchmarks/results/2026-12-04-h200-prepare-sharing/)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def _unsupported(q, k, v, s) -> str | None:
    """Why the kernels cannot run this call, or None."""
    if not q.is_cuda:
        return "no CUDA tensors"
    major, minor = torch.cuda.get_device_capability(q.device)
    if (major, minor) != (9, 0):
        return f"the kernels are built for Hopper (sm_90a), this GPU is sm_{major}{minor}"
    if not (q.dtype == k.dtype == v.dtype and q.dtype in KERNEL_DTYPES):
        names = " or ".join(str(d).removeprefix("torch.") for d in KERNEL_DTYPES)
        return f"the kernels are checked for q, k, v all {names}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if (s.K, s.V) != (128, 128):  # the only head size checked on the GPU so far
        return f"the kernels are built and checked for K = V = 128, got K={s.K}, V={s.V}"
    return None


# ForwardConfig fields the op sets besides the plan's block_v, and PrepareConfig fields besides the
# plan's heads_per_cta (a heads_per_cta here overrides the plan's); tests and benchmarks swap them.
# The rest (m_role, registers, ...) take their defaults
FORWARD_OPTIONS: dict = {}
PREPARE_OPTIONS: dict = {}


def forward_config(block_v: int) -> ForwardConfig:
    """The forward config the op runs at V block ``block_v`` (read at call time)."""
    return ForwardConfig(block_v=block_v, **FORWARD_OPTIONS)


def prepare_config(heads_per_cta: int) -> PrepareConfig:
    """The gdn_prepare config the op runs at ``heads_per_cta`` value heads a CTA (read at call time)."""
    return PrepareConfig(**{"heads_per_cta": heads_per_cta, **PREPARE_OPTIONS})


def sources_for(heads: Heads, forward: ForwardConfig | None = None,
                prepare: PrepareConfig | None = None) -> dict[str, str]:
    """The rendered kernels for one head configuration (default configs until the autotuner picks;
    forward None: the op's config at the widest block; prepare None: one value head a CTA)."""
    return render(get_variant("gdn"), heads, forward or forward_config(max(FORWARD_WIDTHS)),
                  prepare or prepare_config(1))


def op_sources(rec, heads: Heads, widths=None) -> dict:
    """{(kernel name, variant): TileLang source} of every kernel the op may run for ``heads``:
    gdn_forward at every width in ``widths`` (variant "bv32" ...; default: every FORWARD_WIDTHS
    block dividing V), gdn_prepare at every heads_per_cta the plan may pick ("heads1", and
    "heads{group}" with GVA), the kernels that depend on neither config once (variant None).
    Raises UnsupportedRecurrence where rec has no template, ValueError for a width it cannot take."""
    widths = widths or [w for w in FORWARD_WIDTHS if heads.v_dim % w == 0]
    configs = [(width, 1) for width in widths] + [(widths[0], heads.group)]
    sources = {}
    for width, heads_per_cta in configs:
        for name, source in render(rec, heads, forward_config(width), prepare_config(heads_per_cta)).items():
            variant = {"gdn_forward": f"bv{width}", "gdn_prepare": f"heads{heads_per_cta}"}.get(name)
            sources.setdefault((name, variant), source)
    return sources


@functools.lru_cache(maxsize=None)
def kernels(heads: Heads, forward: ForwardConfig | None = None, prepare: PrepareConfig | None = None) -> dict:
    """Compiled kernels for one head configuration and config (cached in-process and on disk)."""
    return compile_all(sources_for(heads, forward, prepare), get_variant("gdn").ir_hash)


def packed_ranges(cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """gdn_forward's (seq_start, seq_end, end_offset) for the packed sequences ``cu`` [N + 1] int32:
    range n is [cu[n], cu[n + 1]), read from cu itself (no copies, so no launches)."""
    return cu, cu, 1


def final_rows(count: int, wanted: bool, device) -> torch.Tensor:
    """gdn_forward's final_row for ``count`` packed sequences: each to its own row, or (not ``wanted``)
    nowhere, so that the kernel does not store final states nobody reads."""
    if wanted:
        return kept_range(count, device)
    return kept_rows(("nowhere", device), count, lambda r: torch.full((r,), -1, dtype=torch.int32, device=device))


def dense_offsets(batch: int, length: int, device) -> torch.Tensor:
    """cu_seqlens [batch + 1] int32 of ``batch`` sequences of ``length`` tokens (a dense call), from a
    buffer kept between calls (gdnc.cp.kept_rows): a fresh one would cost a launch every call."""
    make = lambda rows: torch.arange(rows, dtype=torch.int32, device=device) * length  # noqa: E731
    return kept_rows(("dense offsets", device, length), batch + 1, make)


def plan_for(heads: Heads, tokens: int, num_sequences: int, device, split: SplitConfig = SplitConfig()) -> ForwardPlan:
    """The plan of one call: V block, split and gdn_prepare's heads a CTA (a fixed heuristic until the
    autotuner chooses per shape)."""
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    plan = plan_forward(tokens, num_sequences, heads.h_v, sm_count, v_dim=heads.v_dim, config=split)
    resident = sm_count * prepare_config(1).ctas_per_sm
    return dataclasses.replace(plan, prepare_heads_per_cta=prepare_heads_per_cta(
        tokens, num_sequences, heads.h_qk, heads.group, resident, CHUNK))


class PrepareArgs(NamedTuple):
    """gdn_prepare's arguments in its order: packed inputs, the sequences, its three outputs."""

    k: torch.Tensor  # [B·T, H, K]
    g: torch.Tensor  # [B·T, HV] fp32
    beta: torch.Tensor  # [B·T, HV] fp32
    cu_seqlens: torch.Tensor  # [N + 1] int32
    a_free: torch.Tensor  # [B·T, HV, C], written by the kernel
    l2_gate: torch.Tensor  # [B·T, HV] fp32, written by the kernel
    contracts: torch.Tensor  # [B·T, HV] fp32, written at each chunk's first row (1.0: every transition non-expansive)


def output_allocator(device, poison: bool):
    """``empty(*shape, dt=dtype)`` for kernel outputs; NaN-filled when ``poison`` (tests: an element the
    kernel does not write must show)."""
    if poison:
        return lambda *shape, dt: torch.full(shape, float("nan"), dtype=dt, device=device)
    return lambda *shape, dt: torch.empty(shape, dtype=dt, device=device)


def prepare_args(k, g, beta, s, cu_seqlens, empty) -> PrepareArgs:
    """gdn_prepare's arguments for a checked call ``s``: k, g, beta packed to B·T rows, ``cu_seqlens``
    (int32 offsets), and output buffers from ``empty``."""
    tokens = s.B * s.T
    return PrepareArgs(k.reshape(tokens, s.H, s.K).contiguous(), g.reshape(tokens, s.HV).float().contiguous(),
                       beta.reshape(tokens, s.HV).float().contiguous(), cu_seqlens,
                       empty(tokens, s.HV, CHUNK, dt=k.dtype),
                       empty(tokens, s.HV, dt=torch.float32), empty(tokens, s.HV, dt=torch.float32))


def run_kernels(q, k, v, g, beta, s, initial_state, output_final_state, cu_seqlens,
                plan: ForwardPlan | None = None, split: SplitConfig = SplitConfig()):
    """The kernel path of chunk_gated_delta_rule for a checked call ``s`` (check_arguments)."""
    device, dtype = q.device, q.dtype
    heads = Heads(s.H, s.HV, s.K, s.V, "bfloat16" if dtype == torch.bfloat16 else "float16")
    tokens, N = s.B * s.T, s.num_sequences
    plan = plan or plan_for(heads, tokens, N, device, split)
    # the module's defaults are read at call time, so that tests and benchmarks can swap them
    compiled = kernels(heads, forward_config(plan.block_v), prepare_config(plan.prepare_heads_per_cta))
    if cu_seqlens is None:
        cu = dense_offsets(s.B, s.T, device)
    else:
        cu = cu_seqlens.to(torch.int32)
    empty = output_allocator(device, os.environ.get("GDNC_POISON_OUTPUTS") == "1")
    prep = prepare_args(k, g, beta, s, cu, empty)
    compiled["gdn_prepare"](*prep)
    q_packed = q.reshape(tokens, s.H, s.K).contiguous()
    v_packed = v.reshape(tokens, s.HV, s.V).contiguous()
    o = empty(tokens, s.HV, s.V, dt=dtype)

    unread = kept_zeros((1, s.HV, s.K, s.V), torch.float32, device)  # binds initial_state where none is read

    def forward(v_, h0, start, end, o_, final, final_row, end_offset=0):
        """gdn_forward over the token ranges [start_r, end_{r + end_offset}) from h0 [ranges, HV, K, V] (None:
        from zero), range r's end state to final[final_row[r]] where final_row[r] >= 0 (gdnc.cp.split_forward)."""
        compiled["gdn_forward"](q_packed, prep.k, v_, prep.l2_gate, prep.beta, prep.a_free, start, end, end_offset,
                                int(h0 is None), unread if h0 is None else h0, s.scale, o_, final_row, final)

    h0 = initial_state.float().contiguous() if initial_state is not None else None
    if plan.split:
        # after gdn_prepare, five launches and no host sync: cp_plan, the three forward passes, cp_chain
        slots = run_planner(compiled["cp_plan"], cu, prep.l2_gate, prep.contracts, plan, split, CHUNK)
        final_state = split_forward(forward, compiled["cp_chain"], v_packed, h0, slots, o, empty)
    else:
        start, end, end_offset = packed_ranges(cu)
        final_state = empty(N, s.HV, s.K, s.V, dt=torch.float32)
        forward(v_packed, h0, start, end, o, final_state, final_rows(N, output_final_state, device), end_offset)
    return o.reshape(s.B, s.T, s.HV, s.V), (final_state if output_final_state else None)
