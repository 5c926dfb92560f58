"""gdnc's main job on a recurrence: derive its chunked form and check it against the references."""
from __future__ import annotations

import dataclasses
import time

import torch

from gdnc.ir.canonical import classify
from gdnc.ir.recurrence import Recurrence
from gdnc.reference import chunked, recurrent
from gdnc.reference.compare import errors_by_name, random_case

TOLERANCE = 1e-10  # float64 chunked vs token-by-token: both exact up to rounding


@dataclasses.dataclass
class CheckResult:
    name: str
    axes: dict
    errors: dict[str, float]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(e <= TOLERANCE for e in self.errors.values())

    def summary(self) -> str:
        worst = max(self.errors, key=self.errors.get)
        status = "PASS" if self.passed else "FAIL"
        errs = " ".join(f"{n}={e:.1e}" for n, e in self.errors.items())
        return (f"{status} {self.name} [{', '.join(f'{k}: {v}' for k, v in self.axes.items())}] "
                f"chunked vs recurrent float64, worst {worst}={self.errors[worst]:.1e} "
                f"(tolerance {TOLERANCE:.0e}; {self.seconds:.1f}s)\n     {errs}")


def check_references(rec: Recurrence, *, T: int = 1000, chunk_size: int = 64, seed: int | None = None) -> CheckResult:
    """Chunked form vs token-by-token reference in float64 on fresh random inputs (GVA, varlen with a
    length-1 sequence, h0): o, final_state and every gradient."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(time.time_ns() % 2**63))
    seqlens = [1, T // 3, T - 1 - T // 3] if T >= 3 else [T]
    case = random_case(rec, T=T, seqlens=seqlens, generator=gen)
    start = time.perf_counter()
    errors = errors_by_name(rec, case, chunked, recurrent, chunk_size=chunk_size)
    return CheckResult(rec.name, classify(rec).axes(), errors, time.perf_counter() - start)


def op_jobs(rec, heads, policy=None) -> list:
    """A build job (gdnc.emit.cache.Job) for every kernel the op's policy may run for ``heads``
    (every candidate config); rec: a Recurrence, or a built-in one's name. Raises
    UnsupportedRecurrence where it has no template."""
    from gdnc.emit.cache import render_job
    from gdnc.runtime.policy import DEFAULT_POLICY

    return [render_job(rec, kernel, heads, config) for kernel, config in (policy or DEFAULT_POLICY).candidates(heads)]


def job_label(job) -> str:
    """``gdn_forward (bv64)``: the kernel and, where the op has several, its variant."""
    from gdnc.emit.registry import spec

    label = spec(job.kernel).label(job.config)
    return job.kernel if label is None else f"{job.kernel} ({label})"


def check_kernels(rec: Recurrence, heads, T: int = 4096, workers: int = 1) -> tuple[bool, str]:
    """Generate the recurrence's kernels for ``heads``, lower them for sm_90a and build them with nvcc
    (no GPU needed; ``workers`` processes; what nvcc reported is cached, so a second check builds
    nothing); on a Hopper GPU also run the op against the float64 reference. Returns (passed, report)."""
    import shutil

    from gdnc.emit.cache import lower_job, report_job, run_jobs
    from gdnc.ir.canonical import UnsupportedRecurrence

    try:
        jobs = op_jobs(rec, heads)
    except UnsupportedRecurrence as e:
        return True, f"{e} (references only)"
    lines, ok = [], True
    if shutil.which("nvcc") is None:
        for job, cuda in zip(jobs, run_jobs(lower_job, jobs, workers)):
            lines.append(f"{job_label(job)}: lowered for sm_90a ({len(cuda)} chars of CUDA); nvcc not found, not built")
        return True, "\n".join(lines + ["nvcc not found: the kernels were generated and lowered, not built or run"])
    for job, rep in zip(jobs, run_jobs(report_job, jobs, workers)):
        # the chunk kernels' products run on wgmma; context parallelism's planner and fp32 chain need none
        good = (rep.wgmma or job.kernel.startswith("cp_")) and rep.spill_stores == 0 and rep.spill_loads == 0
        ok &= good
        lines.append(f"{'PASS' if good else 'FAIL'} {job_label(job)} {heads.h_qk}/{heads.h_v}: built for sm_90a, "
                     f"{rep.launch_threads} threads, {rep.registers} registers, spills {rep.spill_stores}/"
                     f"{rep.spill_loads} B, wgmma={rep.wgmma}, tma={rep.tma}")
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        ok_gpu, line = _run_on_gpu(rec, heads, T)
        ok &= ok_gpu
        lines.append(line)
    else:
        lines.append("no Hopper GPU here: the kernels were generated and built with nvcc, not run")
    return ok, "\n".join(lines)


def kernel_vs_reference(rec, q, k, v, g, beta, h0=None, cu_seqlens=None, policy=None):
    """Run gdnc.chunk_gated_delta_rule (with ``policy``: None, the default) and measure it: relative errors of o and the final state
    against the float64 chunked reference, and the yardstick — the same errors of the chunked
    reference run as the kernels run it (bf16/fp16 operands, fp32 accumulation, output in q's dtype).
    Returns (o, final_state, errors, yardstick)."""
    from gdnc.runtime.ops import chunk_gated_delta_rule
    from gdnc.reference.compare import relative_error

    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens,
                                   policy=policy)
    double = None if h0 is None else h0.double()
    o_ref, ht_ref = chunked(rec, q.double(), k.double(), v.double(), g=g.double(), beta=beta.double(),
                            initial_state=double, output_final_state=True, cu_seqlens=cu_seqlens)
    o_emu, ht_emu = chunked(rec, q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True,
                            cu_seqlens=cu_seqlens, dtype=torch.float32, operand_dtype=q.dtype)
    errors = {"o": relative_error(o, o_ref), "final_state": relative_error(ht, ht_ref)}
    yardstick = {"o": relative_error(o_emu.to(q.dtype), o_ref), "final_state": relative_error(ht_emu, ht_ref)}
    return o, ht, errors, yardstick


def _gradients(fn, leaves: dict, weights, use_final: bool) -> dict:
    """o, the final state and the gradient of sum(w_o · o) + sum(w_h · ht) (the second term only with
    ``use_final``) with respect to every leaf, by name ("dq", "dh0", ...)."""
    live = {n: x.detach().clone().requires_grad_(True) for n, x in leaves.items()}
    o, ht = fn(**live)
    loss = (o.double() * weights[0]).sum()
    if use_final:
        loss = loss + (ht.double() * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(live.values()))
    return {"o": o.detach(), "final_state": ht.detach(), **{f"d{n}": g for n, g in zip(live, grads)}}


def gradients_vs_reference(rec, q, k, v, g, beta, h0=None, cu_seqlens=None, *, use_final=True, l2norm=False,
                           policy=None, repeats=1):
    """Run gdnc.chunk_gated_delta_rule with gradients ``repeats`` times and measure it: relative errors of o,
    the final state and every gradient (dq, dk, dv, dg, dbeta, dh0) against float64 autograd of the
    chunked reference, and the yardstick — the same errors of the chunked reference run as the kernels
    run it (operands rounded to q's dtype, fp32 accumulation, autograd through the rounding). The loss
    is a random linear function of o (and of the final state with ``use_final``). Returns (runs: the
    op's results of each repeat by name, errors, yardstick, fallback warnings the op gave)."""
    import warnings

    import torch.nn.functional as F

    from gdnc.reference.compare import relative_error
    from gdnc.runtime.ops import chunk_gated_delta_rule

    leaves = {"q": q, "k": k, "v": v, "g": g, "beta": beta, **({} if h0 is None else {"h0": h0})}

    def op(q, k, v, g, beta, h0=None):
        return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                      cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=l2norm, policy=policy)

    def reference(dtype, operand_dtype):
        def run(q, k, v, g, beta, h0=None):
            if l2norm:
                q, k = F.normalize(q.to(dtype), dim=-1), F.normalize(k.to(dtype), dim=-1)
            return chunked(rec, q.to(dtype), k.to(dtype), v.to(dtype), g=g.to(dtype), beta=beta.to(dtype),
                           initial_state=None if h0 is None else h0.to(dtype), output_final_state=True,
                           cu_seqlens=cu_seqlens, dtype=dtype, operand_dtype=operand_dtype)
        return run

    N = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    weights = (torch.randn(v.shape, device=v.device, dtype=torch.float64),
               torch.randn(N, v.shape[2], q.shape[3], v.shape[3], device=v.device, dtype=torch.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every fallback shows, not only a call site's first
        runs = [_gradients(op, leaves, weights, use_final) for _ in range(repeats)]
    fallbacks = [str(w.message) for w in caught if "using the chunked reference" in str(w.message)]
    exact = _gradients(reference(torch.float64, None), leaves, weights, use_final)
    emulated = _gradients(reference(torch.float32, q.dtype), leaves, weights, use_final)
    errors = {n: relative_error(runs[0][n], exact[n]) for n in exact}
    yardstick = {n: relative_error(emulated[n].to(runs[0][n].dtype), exact[n]) for n in exact}
    return runs, errors, yardstick, fallbacks


def _run_on_gpu(rec, heads, T):
    import torch.nn.functional as F

    dev = "cuda"
    q = F.normalize(torch.randn(1, T, heads.h_qk, heads.k_dim, device=dev), dim=-1).bfloat16()
    k = F.normalize(torch.randn(1, T, heads.h_qk, heads.k_dim, device=dev), dim=-1).bfloat16()
    v = torch.randn(1, T, heads.h_v, heads.v_dim, device=dev).bfloat16()
    g = F.logsigmoid(torch.randn(1, T, heads.h_v, device=dev))
    beta = torch.rand(1, T, heads.h_v, device=dev)
    h0 = torch.randn(1, heads.h_v, heads.k_dim, heads.v_dim, device=dev)
    _, _, err, yard = kernel_vs_reference(rec, q, k, v, g, beta, h0)
    ok = all(err[n] <= 2 * yard[n] + 1e-6 for n in err)
    _, grad_err, grad_yard, fallbacks = gradients_vs_reference(rec, q, k, v, g, beta, h0)
    grads_ok = not fallbacks and all(grad_err[n] <= 2 * grad_yard[n] + 1e-6 for n in grad_err)
    worst = max(grad_err, key=lambda n: grad_err[n] / max(grad_yard[n], 1e-12))
    return ok and grads_ok, (
        f"{'PASS' if ok else 'FAIL'} on {torch.cuda.get_device_name()}: T={T}, o error {err['o']:.1e} "
        f"(bf16-operand reference {yard['o']:.1e}), final state {err['final_state']:.1e} ({yard['final_state']:.1e})\n"
        f"{'PASS' if grads_ok else 'FAIL'} backward: {len(grad_err) - 2} gradients, the furthest from its yardstick "
        f"{worst} {grad_err[worst]:.1e} ({grad_yard[worst]:.1e})" + (f"; fell back: {fallbacks[0]}" if fallbacks else ""))
