"""Device buffers the op keeps between calls or makes for its kernels' outputs.

A kept buffer is filled once and then only read by the kernels: making it every call would cost
a launch (the fill) every call, which short calls feel. Kept buffers are never freed, since a
captured CUDA graph may read them.
"""
from __future__ import annotations

import math

import torch

_KEPT: dict[tuple, list[torch.Tensor]] = {}


def kept_rows(key: tuple, rows: int, make) -> torch.Tensor:
    """The first ``rows`` rows of a buffer kept between calls under ``key`` (``make(rows)`` makes
    one): the kernels only read these, and a fresh one would cost its fill every call. A kept
    buffer is never freed, since a captured CUDA graph may read it; one made during capture is not
    kept, since capture does not run its fill."""
    kept = _KEPT.setdefault(key, [])
    buf = next((b for b in kept if b.shape[0] >= rows), None)
    if buf is None:
        buf = make(rows)
        if not (buf.is_cuda and torch.cuda.is_current_stream_capturing()):
            kept.append(buf)
    return buf[:rows]


def kept_zeros(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A zero tensor of ``shape``, from kept buffers (kept_rows)."""
    rows = math.prod(shape)
    return kept_rows(("zeros", device, dtype), rows, lambda r: torch.zeros(r, dtype=dtype, device=device)).view(shape)


def kept_identity(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Identity matrices [..., K, K] of ``shape``, from kept buffers (kept_rows)."""
    K, rows = shape[-1], math.prod(shape[:-2])
    make = lambda r: torch.eye(K, dtype=dtype, device=device).expand(r, K, K).contiguous()  # noqa: E731
    return kept_rows(("identity", device, dtype, K), rows, make).view(shape)


def kept_range(count: int, device) -> torch.Tensor:
    """0, 1, …, count − 1 as int32, from kept buffers (kept_rows)."""
    return kept_rows(("range", device), count, lambda r: torch.arange(r, dtype=torch.int32, device=device))


def kept_nowhere(count: int, device) -> torch.Tensor:
    """``count`` row indices of −1 as int32 (a kernel's output row that writes nowhere), from kept buffers
    (kept_rows)."""
    return kept_rows(("nowhere", device), count, lambda r: torch.full((r,), -1, dtype=torch.int32, device=device))


def output_allocator(device, poison: bool):
    """``empty(*shape, dt=dtype)`` for kernel outputs; NaN-filled when ``poison`` (tests: an element the
    kernel does not write must show)."""
    if poison:
        return lambda *shape, dt: torch.full(shape, float("nan"), dtype=dt, device=device)
    return lambda *shape, dt: torch.empty(shape, dtype=dt, device=device)
