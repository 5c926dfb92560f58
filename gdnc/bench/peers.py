"""The implementations the benchmark compares: gdnc, FlashQLA, FLA's Triton kernels, FlashInfer.

Every provider exposes FLA's signature

    fn(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens) -> (o, final_state)

with q, k [1, T, H, K] bf16; v [1, T, HV, V] bf16; g, beta [1, T, HV] fp32 (g in log space);
initial_state [N, HV, K, V] fp32; cu_seqlens [N + 1] int32 or None; o [1, T, HV, V] bf16 and
final_state [N, HV, K, V] fp32. A provider that cannot run here has fn = None and says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

# What the FlashQLA authors published (H200, FlashQLA 0.1.2, FLA 0.5.1, FlashInfer 0.6.13), copied
# from anchors.md, keyed by our provider names (their FLA is FLA's Triton path). Ratios are time
# over FlashQLA's time: above 1 means FlashQLA is faster.
PUBLISHED_FLASHINFER = {
    "source": "FlashQLA authors; H200, FlashQLA 0.1.2, FLA 0.5.1, FlashInfer 0.6.13 (anchors.md)",
    "forward_cases": 171,
    "time_ratio_over_flashqla": {
        "FlashInfer": {"geomean": 1.28, "min": 0.64, "max": 5.16},
        "FLA Triton": {"geomean": 2.05, "min": 1.12, "max": 3.11},
    },
    "flashinfer_faster_cases": 63,
    "examples_ms": {
        "h16-32_4x8192": {"FlashInfer": 0.425, "FlashQLA": 0.611},
        "h16-64_8x1024": {"FlashInfer": 0.232, "FlashQLA": 0.341},
        "h2-8_1x32768": {"FlashInfer": 1.655, "FlashQLA": 0.320, "FLA Triton": 0.902},
    },
}


@dataclass(frozen=True)
class Provider:
    """One implementation: its callable, or None and the reason it cannot run."""

    name: str
    fn: Callable | None
    note: str  # the path that runs, or why nothing runs
    version: str | None = None
    published: dict | None = field(default=None, compare=False)

    @property
    def available(self) -> bool:
        return self.fn is not None


def error_reason(error: BaseException) -> str:
    """'Type: first line of the message', short enough for a table cell."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"[:300]


def _signature_adapter(chunk_gated_delta_rule: Callable) -> Callable:
    """Call a library's chunk_gated_delta_rule with FLA's arguments by keyword."""

    def fn(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
        return chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta, scale=scale,
                                      initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      cu_seqlens=cu_seqlens)

    return fn


def _smoke_test(fn: Callable) -> None:
    """One tiny call on the GPU; raises if fn does not return CUDA tensors of the right shapes."""
    import torch
    import torch.nn.functional as F

    T, H, D = 64, 1, 128
    q = F.normalize(torch.randn(1, T, H, D, device="cuda"), dim=-1).bfloat16()
    k = F.normalize(torch.randn(1, T, H, D, device="cuda"), dim=-1).bfloat16()
    v = torch.randn(1, T, H, D, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(1, T, H, device="cuda"))
    beta = torch.rand(1, T, H, device="cuda").sigmoid()
    h0 = torch.randn(1, H, D, D, device="cuda")
    o, ht = fn(q, k, v, g, beta, None, h0, True, None)
    torch.cuda.synchronize()
    if not (o.is_cuda and ht.is_cuda and o.shape == v.shape and ht.shape == h0.shape):
        raise RuntimeError(f"returned o {tuple(o.shape)} on {o.device}, final_state "
                           f"{tuple(ht.shape)} on {ht.device}; expected CUDA tensors "
                           f"{tuple(v.shape)} and {tuple(h0.shape)}")


def load_gdnc(smoke_test: bool = True) -> Provider:
    """gdnc's op; smoke_test=False skips the GPU call (the warm-up workers, whose parent ran it)."""
    try:
        import gdnc
    except Exception as error:  # the package is under construction: any import failure is a reason
        return Provider("gdnc", None, f"not available: import gdnc failed ({error_reason(error)})")
    kernel = getattr(gdnc, "chunk_gated_delta_rule", None)
    version = getattr(gdnc, "__version__", None)
    if kernel is None:
        return Provider("gdnc", None, "not available: gdnc.chunk_gated_delta_rule does not exist yet",
                        version)
    fn = _signature_adapter(kernel)
    try:
        if smoke_test:
            _smoke_test(fn)
    except Exception as error:
        return Provider("gdnc", None, f"not available: smoke call on the GPU failed "
                                      f"({error_reason(error)})", version)
    return Provider("gdnc", fn, "gdnc.chunk_gated_delta_rule (GPU kernels)", version)


def load_flashqla() -> Provider:
    try:
        import flash_qla
    except Exception as error:
        return Provider("FlashQLA", None, f"not available: import flash_qla failed ({error_reason(error)})")
    return Provider("FlashQLA", _signature_adapter(flash_qla.chunk_gated_delta_rule),
                    "flash_qla.chunk_gated_delta_rule, auto intra-card CP on (its default)",
                    flash_qla.__version__)


def load_fla_triton() -> Provider:
    """FLA's own Triton forward. fla >= 0.5 dispatches to FlashQLA when flash_qla is importable;
    fla.backends reads FLA_DISABLE_BACKEND_DISPATCH once, at import, and then hands back the
    undecorated Triton function, so the variable must be set before anything imports fla."""
    os.environ["FLA_DISABLE_BACKEND_DISPATCH"] = "1"
    try:
        import fla
        import fla.backends
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as error:
        return Provider("FLA Triton", None, f"not available: import fla failed ({error_reason(error)})")
    if not fla.backends._DISPATCH_DISABLED:
        return Provider("FLA Triton", None, "not available: fla was imported before "
                        "FLA_DISABLE_BACKEND_DISPATCH=1 was set, so it may dispatch to FlashQLA",
                        fla.__version__)
    return Provider("FLA Triton", _signature_adapter(chunk_gated_delta_rule),
                    "fla.ops.gated_delta_rule.chunk_gated_delta_rule with "
                    "FLA_DISABLE_BACKEND_DISPATCH=1 (Triton kernels, no dispatch)", fla.__version__)


def load_flashinfer() -> Provider:
    return Provider("FlashInfer", None,
                    "not run: flashinfer-python and its CUDA packages are larger than one device "
                    "call carries; its published ratios are shown instead",
                    published=PUBLISHED_FLASHINFER)


def load_providers(smoke_test: bool = True) -> list[Provider]:
    """All providers, gdnc first. FLA is loaded first of the imports so that its dispatch switch
    is set before gdnc or flash_qla could pull fla in."""
    fla_triton = load_fla_triton()
    return [load_gdnc(smoke_test), load_flashqla(), fla_triton, load_flashinfer()]
