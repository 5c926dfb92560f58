"""Validation and layout of a call, shared by every executor of a recurrence.

FLA's conventions: q, k [B, T, H, K]; v [B, T, HV, V] with HV a multiple of H (GVA: value head i
reads q/k head i // (HV // H)); per-token scalar inputs [B, T, HV]; per-head inputs [HV]; per-channel
inputs [B, T, HV, K|V]; extra keys [B, T, H, K]; initial/final state [N, HV, K, V]; varlen packs N
sequences into B = 1 with cu_seqlens [N + 1].
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from gdnc.ir.signature import Signature

if TYPE_CHECKING:  # not imported at run time: the op checks its calls here without loading sympy
    from gdnc.ir.recurrence import Recurrence


@dataclasses.dataclass
class Problem:
    """A validated call. ``tensors`` are per value head, per token, in the compute dtype:
    q, k and keys [B, T, HV, K]; v [B, T, HV, V]; scalars [B, T, HV]; channels [B, T, HV, K|V]."""

    rec: Recurrence
    tensors: dict[str, torch.Tensor]
    initial_state: torch.Tensor | None  # [N, HV, K, V]
    cu_seqlens: list[int] | None
    scale: float
    B: int
    T: int
    HV: int
    K: int
    V: int

    def groups(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """Batches of equal-length sequences: all of B at once, or each varlen sequence alone.
        Yields (tensors [N, T_n, HV, ...], initial state [N, HV, K, V] or None)."""
        if self.cu_seqlens is None:
            yield self.tensors, self.initial_state
            return
        for n, (bos, eos) in enumerate(zip(self.cu_seqlens[:-1], self.cu_seqlens[1:])):
            h0 = None if self.initial_state is None else self.initial_state[n:n + 1]
            yield {name: x[:, bos:eos] for name, x in self.tensors.items()}, h0


Executor = Callable[[Problem, dict, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def run(problem: Problem, executor: Executor, output_final_state: bool):
    """Run ``executor`` over the problem's sequence groups and assemble FLA's outputs:
    o [B, T, HV, V] and final_state [N, HV, K, V] (or None)."""
    outs, states = [], []
    for tensors, h0 in problem.groups():
        o, ht = executor(problem, tensors, h0)
        outs.append(o)
        states.append(ht)
    o = torch.cat(outs, dim=1)
    return o, (torch.cat(states, dim=0) if output_final_state else None)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The dimensions of a checked call."""

    B: int
    T: int
    H: int
    K: int
    HV: int
    V: int
    seqlens: list[int] | None  # cu_seqlens as a list (varlen, unless read during graph capture), or None
    scale: float
    num_sequences: int


def check_arguments(signature: Signature, q, k, v, *, scale, initial_state, cu_seqlens, inputs: dict) -> Shapes:
    """Check every argument against the recurrence's ``signature`` (Recurrence.signature) and FLA's
    layouts; raise naming the argument. The offsets and the log-space gates' largest values are read
    back to be checked (one device sync for CUDA tensors, none during CUDA-graph capture)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float_tensor(name, x)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K] (4-D), got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k must have q's shape [B, T, H, K] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:2]) != (B, T):
        raise ValueError(f"v must be [B, T, HV, V] with B={B}, T={T} as in q, got shape {tuple(v.shape)}")
    HV, V = v.shape[2], v.shape[3]
    if min(B, T, H, K, HV, V) < 1:
        raise ValueError(f"q [B, T, H, K] and v [B, T, HV, V] need every dimension >= 1, got q {tuple(q.shape)}, "
                         f"v {tuple(v.shape)}")
    if HV % H:
        raise ValueError(f"v has HV={HV} heads, which is not a multiple of q/k's H={H} (GVA needs HV = G*H)")
    device = q.device

    expected = {spec.name: spec for spec in signature.inputs}
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing:
        raise TypeError(f"{signature.name}: missing input {', '.join(map(repr, missing))}; "
                        f"expected inputs: {signature.text()}")
    if extra:
        raise TypeError(f"{signature.name}: unexpected input {', '.join(map(repr, extra))}; "
                        f"expected inputs: {signature.text()}")
    for name, spec in expected.items():
        x = inputs[name]
        _check_float_tensor(name, x)
        shape = spec.shape(B, T, H, HV, K, V)
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must be {spec.layout} = {shape}, got shape {tuple(x.shape)}")
    for name, x in (("k", k), ("v", v), *inputs.items()):
        if x.device != device:
            raise ValueError(f"{name} is on {x.device}, but q is on {device}; all tensors must share a device")
    _check_cu_seqlens(cu_seqlens, B, device)
    seqlens = _read_back(signature, inputs, cu_seqlens, T, device)
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None:
        _check_float_tensor("initial_state", initial_state)
        if tuple(initial_state.shape) != (N, HV, K, V):
            raise ValueError(f"initial_state must be [N, HV, K, V] = {(N, HV, K, V)} for {N} sequence(s), "
                             f"got shape {tuple(initial_state.shape)}")
        if initial_state.device != device:
            raise ValueError(f"initial_state is on {initial_state.device}, but q is on {device}")

    if scale is None:
        scale = K ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None (K^-0.5), got {type(scale).__name__}: {scale!r}")
    return Shapes(B, T, H, K, HV, V, seqlens, float(scale), N)


def _read_back(signature: Signature, inputs: dict, cu_seqlens, T: int, device) -> list[int] | None:
    """Check what only the data can tell: cu_seqlens rises strictly from 0 to T, and every log-space
    gate is <= 0. On CUDA tensors both are read in one transfer (one device sync), and not at all
    during CUDA-graph capture, which forbids a sync: then nothing is checked and the offsets are
    not known (None). Returns cu_seqlens as a host list, or None."""
    gates = [spec.name for spec in signature.inputs if spec.log_gate]
    if (cu_seqlens is None and not gates) or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return None
    parts = [inputs[name].detach().amax().reshape(1).double() for name in gates]
    if cu_seqlens is not None:
        parts.append(cu_seqlens.double())  # exact: offsets stay far below 2^53
    values = torch.cat(parts).tolist()
    for name, largest in zip(gates, values):
        if largest > 0:
            raise ValueError(f"{name} must be <= 0: {signature.name} reads it as a log-space gate exp({name}), and a "
                             f"gate above 1 grows the state; got a maximum of {largest:.4g} (a gate in linear space? "
                             "pass its log, e.g. F.logsigmoid(x))")
    if cu_seqlens is None:
        return None
    offsets = [int(x) for x in values[len(gates):]]
    if offsets[0] != 0 or offsets[-1] != T or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to T={T} (no empty sequences), got {offsets}")
    return offsets


def prepare(rec: Recurrence, q, k, v, *, scale, initial_state, cu_seqlens, inputs: dict,
            dtype: torch.dtype) -> Problem:
    """Check the call (check_arguments), then lay every tensor out per value head in ``dtype``."""
    s = check_arguments(rec.signature, q, k, v, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                        inputs=inputs)
    if cu_seqlens is not None and s.seqlens is None:
        raise RuntimeError("the reference executors split sequences on the host, which they cannot do while a "
                           "CUDA graph is being captured (cu_seqlens cannot be read); run them outside capture")
    group = s.HV // s.H
    tensors = {"q": q.repeat_interleave(group, 2), "k": k.repeat_interleave(group, 2), "v": v}
    for spec in rec.signature.inputs:
        x = inputs[spec.name]
        if spec.kind == "key":
            x = x.repeat_interleave(group, 2)
        elif spec.kind == "head":
            x = x.expand(s.B, s.T, s.HV)
        tensors[spec.name] = x
    tensors = {name: x.to(dtype) for name, x in tensors.items()}
    h0 = None if initial_state is None else initial_state.to(dtype)
    return Problem(rec, tensors, h0, s.seqlens, s.scale, s.B, s.T, s.HV, s.K, s.V)


def _check_float_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_cu_seqlens(cu_seqlens, B, device) -> None:
    """cu_seqlens' type, shape and device (its values: _read_back)."""
    if cu_seqlens is None:
        return
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a 1-D integer torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise TypeError(f"cu_seqlens must be a 1-D int32/int64 tensor of N+1 offsets, got dtype "
                        f"{cu_seqlens.dtype} and shape {tuple(cu_seqlens.shape)}")
    if B != 1:
        raise ValueError(f"cu_seqlens packs sequences along T and needs B = 1, got B = {B}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, but q is on {device}")


def fold_heads(x: torch.Tensor) -> torch.Tensor:
    """[N, T, HV, ...] -> [N*HV, T, ...]: sequences and heads become one batch dimension."""
    return x.transpose(1, 2).reshape(x.shape[0] * x.shape[2], x.shape[1], *x.shape[3:])


def matrix_leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-token tensors [N, T, HV, ...] as IR leaves with heads folded: scalars [N*HV, T, 1, 1],
    vectors [N*HV, T, n, 1] (the matrix shapes gdnc.reference.evaluate expects)."""
    leaves = {}
    for name, x in tensors.items():
        x = fold_heads(x)
        leaves[name] = x[..., None, None] if x.dim() == 2 else x[..., None]
    return leaves


def start_state(h0: torch.Tensor | None, like: torch.Tensor, K: int, V: int) -> torch.Tensor:
    """The initial state [N, HV, K, V] with heads folded, [N*HV, K, V], or zeros for each of the
    ``like.shape[0]`` folded heads."""
    if h0 is None:
        return like.new_zeros(like.shape[0], K, V)
    return h0.reshape(-1, K, V)


def unfold_heads(x: torch.Tensor, N: int) -> torch.Tensor:
    """[N*HV, T, ...] -> [N, T, HV, ...]."""
    return x.reshape(N, x.shape[0] // N, *x.shape[1:]).transpose(1, 2)
